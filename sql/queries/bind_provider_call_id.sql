-- Records the provider's id for an attempt that has none yet, and for its call when it is
-- the call's current attempt. The unique index on call_attempts.provider_call_id refuses
-- an id another attempt has.
--   $1 attempt row id    $2 provider id    $3 call id    $4 true when it is the current attempt
WITH attempt AS (
    UPDATE call_attempts SET provider_call_id = $2 WHERE id = $1
)
UPDATE calls
SET external_call_id = $2, updated_at = now()
WHERE id = $3 AND $4 AND external_call_id IS NULL
