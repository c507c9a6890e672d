-- Locks one attempt of a call (the call is locked already: lock_call.sql) and reads what a
-- decision about it needs. A 429 leaves a RATE_LIMITED row with the same attempt number,
-- which is not the attempt.
--   $1 call id    $2 attempt number
SELECT id, status, provider_call_id, final_webhook_at IS NOT NULL AS final_webhook, attempt
FROM call_attempts
WHERE call_id = $1 AND attempt = $2 AND status <> 'RATE_LIMITED'
FOR UPDATE
