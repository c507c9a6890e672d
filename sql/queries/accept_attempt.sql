-- A progress webhook for a DIALING attempt: the provider clearly holds the call, so the
-- attempt needs no rescue.
--   $1 attempt row id
UPDATE call_attempts SET status = 'ACCEPTED', accepted_at = now()
WHERE id = $1 AND status = 'DIALING'
