-- Locks the attempt row $2 of call $1 (the call is locked already: lock_call.sql) and reads
-- what a decision about it needs. The dial path names its attempt by row: after the vendor
-- refused an attempt for its concurrency limit, the same attempt number is claimed again as
-- another row, which a late answer to the first must never touch.
SELECT id, status, provider_call_id, final_webhook_at IS NOT NULL AS final_webhook, attempt
FROM call_attempts
WHERE call_id = $1 AND id = $2
FOR UPDATE
