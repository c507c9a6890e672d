-- Locks a call for a change to one of its attempts; its status and current attempt number,
-- and its number and schedule (where a retry must land).
-- Every writer locks the call first and the attempt second, so none deadlocks another.
--   $1 call id
SELECT status, attempts, to_number, timezone, not_before, not_after FROM calls WHERE id = $1 FOR UPDATE
