-- The attempt the provider knows as $1, its call locked in the same statement.
SELECT c.id, a.attempt
FROM call_attempts a
JOIN calls c ON c.id = a.call_id
WHERE a.provider_call_id = $1
FOR UPDATE OF c
