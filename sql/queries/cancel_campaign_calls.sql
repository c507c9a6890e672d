-- Cancels PENDING calls of cancelled campaigns (one, or any), a bounded number per
-- statement, each with a CANCELLED entry; calls a PATCH or the claim holds are skipped and
-- taken by the next pass. The claim never serves a cancelled campaign, so none of these is
-- dialed meanwhile. Returns how many were cancelled.
--   $1 the campaign, or NULL for every cancelled one   $2 most calls
WITH doomed AS (
    SELECT c.id
    FROM campaigns k
    JOIN call_queue q ON q.lane = k.id AND q.status = 'PENDING'
    JOIN calls c ON c.id = q.call_id
    WHERE k.status = 'CANCELLED' AND ($1::uuid IS NULL OR k.id = $1)
      AND c.status = 'PENDING'
    LIMIT $2
    FOR UPDATE OF c SKIP LOCKED
),
cancelled AS (
    UPDATE calls c
    SET status = 'CANCELLED', last_error = 'campaign cancelled', next_attempt_at = NULL,
        waiting_for = NULL, completed_at = now(), updated_at = now()
    FROM doomed
    WHERE c.id = doomed.id
    RETURNING c.id, c.campaign_id
),
entries AS (
    INSERT INTO call_events (call_id, kind, detail)
    SELECT id, 'CANCELLED', jsonb_build_object('by', 'campaign', 'campaignId', campaign_id)
    FROM cancelled
)
SELECT count(*) FROM cancelled
