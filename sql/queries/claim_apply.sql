-- The second half of a claim (see claim_calls.sql), in the same transaction, on calls the
-- first half locked: claims the admitted calls as new DIALING attempts (leased to the
-- claiming replica for $2 seconds) with a DIALED entry each. Returns the claimed rows in
-- the order given. Claims are stamped with `statement_timestamp()` (after the claim lock
-- was granted), as the daily limit per number counts them by it. The calls the schedule
-- held back are moved on by hold_calls.sql, only when there are any.
--   $1 calls to claim, in dial order   $2 lease, in seconds
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
)
SELECT claimed.*, attempts.attempt_id
FROM claimed
JOIN attempts ON attempts.call_id = claimed.id
JOIN claim USING (id)
ORDER BY claim.ord
