-- Cancels a call if, and only if, it is still PENDING, and records it on the timeline.
-- Racing a claim, it waits for the claim's row lock and then finds the call IN_PROGRESS.
WITH cancelled AS (
    UPDATE calls
    SET status = 'CANCELLED',
        next_attempt_at = NULL,
        completed_at = now(),
        updated_at = now()
    WHERE id = $1 AND status = 'PENDING'
    RETURNING *
),
events AS (
    INSERT INTO call_events (call_id, kind)
    SELECT id, 'CANCELLED' FROM cancelled
)
SELECT * FROM cancelled
