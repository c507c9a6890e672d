-- The second half of a claim (see claim_calls.sql), in the same transaction, on calls the
-- first half locked: claims the admitted calls as new DIALING attempts (leased to the
-- claiming replica for $2 seconds) with a DIALED entry each, and moves on the calls the
-- schedule held back: later (WAITING), past their deadline (EXPIRED), or suppressed
-- (CANCELLED). A call is in one list at most. Returns the claimed rows in the order given.
-- Claims are stamped with `statement_timestamp()` (after the claim lock was granted), as
-- the daily limit per number counts them by it.
--   $1 calls to claim, in dial order   $2 lease, in seconds
--   $3 calls to move later   $4 until when   $5 why (calls.waiting_for)
--   $6 calls whose deadline passed   $7 their lastError
--   $8 calls whose number is suppressed   $9 their lastError
WITH claim AS (
    SELECT * FROM UNNEST($1::uuid[]) WITH ORDINALITY AS t (id, ord)
),
claimed AS (
    UPDATE calls c
    SET status = 'IN_PROGRESS',
        attempts = c.attempts + 1,
        started_at = statement_timestamp(),
        next_attempt_at = NULL,
        external_call_id = NULL,
        waiting_for = NULL,
        updated_at = now()
    FROM claim
    WHERE c.id = claim.id AND c.status = 'PENDING'
    RETURNING c.*
),
attempts AS (
    INSERT INTO call_attempts (call_id, attempt, claimed_at, lease_until, to_number)
    SELECT id, attempts, statement_timestamp(), statement_timestamp() + make_interval(secs => $2),
           to_number
    FROM claimed
    RETURNING id AS attempt_id, call_id
),
dialed AS (
    INSERT INTO call_events (call_id, attempt, kind)
    SELECT id, attempts, 'DIALED' FROM claimed
),
later AS (
    SELECT * FROM UNNEST($3::uuid[], $4::timestamptz[], $5::text[]) AS t (id, until, why)
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
    SELECT * FROM UNNEST($6::uuid[], $7::text[]) AS t (id, error)
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
    SELECT * FROM UNNEST($8::uuid[], $9::text[]) AS t (id, error)
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
SELECT claimed.*, attempts.attempt_id
FROM claimed
JOIN attempts ON attempts.call_id = claimed.id
JOIN claim USING (id)
ORDER BY claim.ord
