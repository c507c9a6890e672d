-- Retention: deletes up to $2 final calls whose completed_at is before $1, oldest first.
-- Their attempts, timeline and Idempotency-Keys go with them (ON DELETE CASCADE, by the
-- indexes on call_id), and the triggers on `calls` keep the counts right. Calls someone
-- holds (a late webhook, an operator) are skipped, never waited for; claims never touch
-- final calls. Returns how many were deleted.
--   $1 completed before this
--   $2 most calls to delete
WITH doomed AS (
    SELECT id FROM calls
    WHERE completed_at < $1
    ORDER BY completed_at
    LIMIT $2
    FOR UPDATE SKIP LOCKED
),
deleted AS (
    DELETE FROM calls WHERE id IN (SELECT id FROM doomed) RETURNING 1
)
SELECT count(*) FROM deleted
