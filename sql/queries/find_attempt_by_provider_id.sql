-- The attempt the provider knows as $1, its call locked in the same statement, and whether
-- it is a RATE_LIMITED row (an attempt the vendor did not place, for its concurrency limit:
-- its call has moved on to the same attempt number again, so a repeat of that word must
-- not touch the attempt that took its place).
SELECT c.id, a.attempt, a.status = 'RATE_LIMITED' AS rate_limited
FROM call_attempts a
JOIN calls c ON c.id = a.call_id
WHERE a.provider_call_id = $1
FOR UPDATE OF c
