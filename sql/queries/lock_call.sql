-- Locks a call for a change to one of its attempts; its status and current attempt number.
-- Every writer locks the call first and the attempt second, so none deadlocks another.
--   $1 call id
SELECT status, attempts FROM calls WHERE id = $1 FOR UPDATE
