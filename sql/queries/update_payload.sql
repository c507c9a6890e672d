-- Writes a re-validated payload over a PENDING call the caller holds locked (FOR UPDATE),
-- and records the patch on the timeline.
WITH updated AS (
    UPDATE calls
    SET to_number = $2,
        script_id = $3,
        metadata = $4,
        updated_at = now()
    WHERE id = $1 AND status = 'PENDING'
    RETURNING *
),
events AS (
    INSERT INTO call_events (call_id, kind, detail)
    SELECT id, 'UPDATED', jsonb_build_object('patch', $5::jsonb) FROM updated
)
SELECT * FROM updated
