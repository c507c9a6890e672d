-- Ends PENDING calls whose notAfter has passed, wherever they wait (their window, their
-- backoff, a full cap): EXPIRED, never dialed, with a timeline entry. Rows locked by a
-- claim or a PATCH are passed over (the claim checks the deadline itself). Returns the ids.
--   $1 most calls per statement
WITH late AS (
    SELECT id, not_after
    FROM calls
    WHERE status = 'PENDING' AND not_after IS NOT NULL AND not_after <= now()
    ORDER BY not_after
    LIMIT $1
    FOR UPDATE SKIP LOCKED
),
expired AS (
    UPDATE calls c
    SET status = 'EXPIRED',
        last_error = 'deadline passed: notAfter ' || to_char(late.not_after AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS"Z"')
                     || ' came before it could be dialed',
        next_attempt_at = NULL,
        waiting_for = NULL,
        completed_at = now(),
        updated_at = now()
    FROM late
    WHERE c.id = late.id
    RETURNING c.id, c.last_error
),
entries AS (
    INSERT INTO call_events (call_id, kind, detail)
    SELECT id, 'EXPIRED', jsonb_build_object('reason', last_error) FROM expired
)
SELECT id FROM expired
