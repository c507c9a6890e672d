-- Locks a call for a change to one of its attempts; its status and current attempt number,
-- its number and schedule (where a retry must land), and its campaign's window, start, end
-- and retry policy, which narrow the global ones (and whether it was cancelled: its calls
-- are not retried then).
-- Every writer locks the call first and the attempt second, so none deadlocks another.
--   $1 call id
SELECT c.status, c.attempts, c.to_number, c.timezone, c.not_before, c.not_after,
       c.campaign_id, k.window_hours, k.window_days, k.start_at, k.end_at, k.retry,
       k.status = 'CANCELLED' AS campaign_cancelled
FROM calls c
LEFT JOIN campaigns k ON k.id = c.campaign_id
WHERE c.id = $1
FOR UPDATE OF c
