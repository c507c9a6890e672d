-- Expires IN_PROGRESS calls that have waited longer than CALL_TIMEOUT ($1, seconds) for
-- their final webhook, at most $2 at a time; their current attempt is expired with them.
-- A final webhook that still comes later records the real outcome (see the webhook code).
-- Locks the calls first and their attempts second, like every other writer.
WITH overdue AS (
    SELECT id
    FROM calls
    WHERE status = 'IN_PROGRESS'
      AND started_at < now() - make_interval(secs => $1)
    ORDER BY started_at
    LIMIT $2
    FOR UPDATE SKIP LOCKED
),
expired AS (
    UPDATE calls c
    SET status = 'EXPIRED',
        completed_at = now(),
        updated_at = now(),
        last_error = 'no final webhook within CALL_TIMEOUT'
    FROM overdue
    WHERE c.id = overdue.id
    RETURNING c.id, c.attempts
),
attempts AS (
    UPDATE call_attempts a
    SET status = 'EXPIRED', ended_at = now()
    FROM expired e
    WHERE a.call_id = e.id
      AND a.attempt = e.attempts
      AND a.status IN ('DIALING', 'ACCEPTED')
),
events AS (
    INSERT INTO call_events (call_id, attempt, kind)
    SELECT id, attempts, 'EXPIRED' FROM expired
)
SELECT id FROM expired
