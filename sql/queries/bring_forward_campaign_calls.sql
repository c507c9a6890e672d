-- After a campaign's startAt moved earlier (or was removed): its PENDING calls that waited
-- for the old start fall due at the new one (or now), a bounded number per statement, found
-- through the queue's lane index (they are due exactly at the old start). The claim judges
-- each again when it falls due (its own notBefore, its window). Returns how many moved.
--   $1 the campaign   $2 its old startAt   $3 its new startAt (NULL: none)   $4 most calls
WITH waiting AS (
    SELECT c.id
    FROM call_queue q
    JOIN calls c ON c.id = q.call_id
    WHERE q.lane = $1 AND q.status = 'PENDING' AND q.due_at = $2
      AND c.status = 'PENDING' AND c.waiting_for = 'NOT_BEFORE'
    LIMIT $4
    FOR UPDATE OF c SKIP LOCKED
),
moved AS (
    UPDATE calls c
    SET next_attempt_at = greatest(coalesce($3, now()), now()), waiting_for = NULL,
        updated_at = now()
    FROM waiting
    WHERE c.id = waiting.id
    RETURNING c.id
)
SELECT count(*) FROM moved
