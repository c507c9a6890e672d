-- Writes a re-validated payload and schedule over a PENDING call the caller holds locked
-- (FOR UPDATE), with the due time its schedule gives, and records the patch on the
-- timeline.
--   $1 id   $2 number   $3 script   $4 metadata   $5 the patch, for the timeline
--   $6 notBefore   $7 notAfter   $8 time zone   $9 when due   $10 why it waits, if it does
--   $11 the schedule fields the patch changed, for the timeline (`{"notBefore": …}`)
WITH updated AS (
    UPDATE calls
    SET to_number = $2,
        script_id = $3,
        metadata = $4,
        not_before = $6,
        not_after = $7,
        timezone = $8,
        next_attempt_at = $9,
        waiting_for = $10,
        updated_at = now()
    WHERE id = $1 AND status = 'PENDING'
    RETURNING *
),
events AS (
    INSERT INTO call_events (call_id, kind, detail)
    SELECT id, 'UPDATED',
           CASE WHEN $5::jsonb = 'null'::jsonb THEN '{}'::jsonb
                ELSE jsonb_build_object('patch', $5::jsonb) END || $11::jsonb
    FROM updated
)
SELECT * FROM updated
