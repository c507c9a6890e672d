-- The provider's ids of the other attempts to number $1 claimed since $2, and of every
-- attempt of call $3 whatever its age: a look-up for an attempt whose dial answer was lost
-- must not take one of them for its own (Twilio keeps no reference of ours on a call, so its
-- look-up matches by number and time; a call the vendor ended for its concurrency limit
-- carries the same reference as the redial of its attempt number).
SELECT a.provider_call_id
FROM call_attempts a
JOIN calls c ON c.id = a.call_id
WHERE ((c.to_number = $1 AND a.claimed_at >= $2) OR a.call_id = $3)
  AND a.provider_call_id IS NOT NULL
