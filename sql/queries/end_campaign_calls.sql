-- Expires the PENDING calls of campaigns whose endAt has passed, a bounded number per
-- statement, each with an EXPIRED entry; they are never dialed (the claim expires any it
-- meets first). Returns how many expired.
--   $1 most calls
WITH ended AS (
    SELECT c.id, k.end_at
    FROM campaigns k
    JOIN call_queue q ON q.lane = k.id AND q.status = 'PENDING'
    JOIN calls c ON c.id = q.call_id
    WHERE k.status IN ('ACTIVE', 'PAUSED') AND k.end_at <= now()
      AND c.status = 'PENDING'
    LIMIT $1
    FOR UPDATE OF c SKIP LOCKED
),
expired AS (
    UPDATE calls c
    SET status = 'EXPIRED',
        last_error = 'campaign ended: its endAt '
            || to_char(ended.end_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS"Z"')
            || ' came before the call could be dialed',
        next_attempt_at = NULL, waiting_for = NULL, completed_at = now(), updated_at = now()
    FROM ended
    WHERE c.id = ended.id
    RETURNING c.id, c.last_error
),
entries AS (
    INSERT INTO call_events (call_id, kind, detail)
    SELECT id, 'EXPIRED', jsonb_build_object('reason', last_error, 'by', 'campaign') FROM expired
)
SELECT count(*) FROM expired
