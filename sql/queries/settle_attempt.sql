-- Settles one attempt and, when it is the call's current one, moves the call; records both
-- on the timeline, in order. The caller holds the call's row lock (and the attempt's).
--   $1 call id        $2 attempt number     $3 attempt row id
--   $4 the attempt's outcome (COMPLETED, FAILED, RATE_LIMITED)   $5 its error, if any
--   $6 first event kind (WEBHOOK_RECEIVED, DIAL_FAILED, RATE_LIMITED)   $7 its detail
--   $8 the call's new status (NULL: the call stays as it is; COMPLETED, FAILED, PENDING)
--   $9 seconds until the next attempt, for PENDING    $10 durationSec, for COMPLETED
--   $11 1 when the attempt does not count (a 429): the same number is dialed again
--   $12 second event kind (COMPLETED, FAILED, RETRY_SCHEDULED, or NULL)   $13 its detail
--   $14 true when a final webhook settles it (its repeats are duplicates from then on)
--   $15 for PENDING: when its calling window (or notBefore) lets the retry go, if after
--       the backoff   $16 why (calls.waiting_for)
WITH ended AS (
    UPDATE call_attempts
    SET status = $4, error = $5, ended_at = now(),
        final_webhook_at = CASE WHEN $14 THEN now() ELSE final_webhook_at END
    WHERE id = $3
),
moved AS (
    UPDATE calls
    SET status = $8::call_status,
        attempts = attempts - $11,
        last_error = CASE WHEN $8 = 'COMPLETED' THEN last_error ELSE COALESCE($5, last_error) END,
        duration_sec = COALESCE($10, duration_sec),
        next_attempt_at = CASE WHEN $8 = 'PENDING'
                               THEN greatest(now() + make_interval(secs => $9), $15::timestamptz) END,
        waiting_for = CASE WHEN $8 = 'PENDING' AND $15::timestamptz > now() + make_interval(secs => $9)
                           THEN $16::text END,
        completed_at = CASE WHEN $8 = 'PENDING' THEN NULL ELSE now() END,
        updated_at = now()
    WHERE id = $1 AND $8::call_status IS NOT NULL
)
INSERT INTO call_events (call_id, attempt, kind, detail)
SELECT $1, $2, e.kind, e.detail
FROM (VALUES (1, $6::text, $7::jsonb), (2, $12::text, $13::jsonb)) AS e (ord, kind, detail)
WHERE e.kind IS NOT NULL
ORDER BY e.ord
