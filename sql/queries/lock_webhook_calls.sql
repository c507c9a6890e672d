-- Locks, in id order, the calls that a batch of webhooks names, by their provider ids ($1)
-- and by the verified references of their URLs ($2), before any of them is applied: the
-- dispatcher's batch of 2xx answers locks its calls in id order too (record_accepted.sql),
-- so the two never deadlock. An array, not `IN (…) OR …`, which the planner would answer
-- with a scan of calls.
SELECT id
FROM calls
WHERE id = ANY (ARRAY(SELECT call_id FROM call_attempts WHERE provider_call_id = ANY ($1)) || $2)
ORDER BY id
FOR UPDATE
