-- The calls a claim's schedule held back (see claim_calls.sql and db::claim), moved on in
-- the claim's transaction, on rows it locked: later (WAITING, with why and until when),
-- past their deadline (EXPIRED), or suppressed (CANCELLED), each with its timeline entry.
-- A call is in one list at most. Run only when a list is not empty.
--   $1 calls to move later   $2 until when   $3 why (calls.waiting_for)
--   $4 calls whose deadline passed   $5 their lastError
--   $6 calls whose number is suppressed   $7 their lastError
WITH later AS (
    SELECT * FROM UNNEST($1::uuid[], $2::timestamptz[], $3::text[]) AS t (id, until, why)
),
moved AS (
    UPDATE calls c
    SET next_attempt_at = later.until, waiting_for = later.why, updated_at = now()
    FROM later
    WHERE c.id = later.id AND c.status = 'PENDING'
    RETURNING c.id, later.until, later.why
),
waiting AS (
    INSERT INTO call_events (call_id, kind, detail)
    SELECT id, 'WAITING', jsonb_build_object('reason', why, 'until', until) FROM moved
),
expire AS (
    SELECT * FROM UNNEST($4::uuid[], $5::text[]) AS t (id, error)
),
expired AS (
    UPDATE calls c
    SET status = 'EXPIRED', last_error = expire.error, next_attempt_at = NULL,
        waiting_for = NULL, completed_at = now(), updated_at = now()
    FROM expire
    WHERE c.id = expire.id AND c.status = 'PENDING'
    RETURNING c.id, expire.error
),
expired_entries AS (
    INSERT INTO call_events (call_id, kind, detail)
    SELECT id, 'EXPIRED', jsonb_build_object('reason', error) FROM expired
),
cancel AS (
    SELECT * FROM UNNEST($6::uuid[], $7::text[]) AS t (id, error)
),
cancelled AS (
    UPDATE calls c
    SET status = 'CANCELLED', last_error = cancel.error, next_attempt_at = NULL,
        waiting_for = NULL, completed_at = now(), updated_at = now()
    FROM cancel
    WHERE c.id = cancel.id AND c.status = 'PENDING'
    RETURNING c.id, cancel.error
),
cancelled_entries AS (
    INSERT INTO call_events (call_id, kind, detail)
    SELECT id, 'CANCELLED', jsonb_build_object('reason', error, 'by', 'suppression') FROM cancelled
)
SELECT (SELECT count(*) FROM moved) + (SELECT count(*) FROM expired) + (SELECT count(*) FROM cancelled)
