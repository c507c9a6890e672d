-- Claims due PENDING calls for dialing, oldest first, at most one per number, never more
-- than the cap in progress; records each claim as a new DIALING attempt (leased to the
-- claiming replica for $3 seconds) and a DIALED event. Returns the claimed rows, with
-- when each fell due (`due_at`).
--   $1 MAX_CONCURRENT_CALLS   $2 most calls to claim   $3 lease, in seconds
--
-- Run only inside a transaction that holds the claim lock (pg_advisory_xact_lock), which
-- makes the count exact: claims are the only way into IN_PROGRESS, so while one claimer
-- holds the lock nobody else can add to the count; the lock is released only after the
-- previous holder's commit is visible, and this statement's snapshot is taken after the
-- lock was granted, so it sees every earlier claim. Concurrent releases (webhooks, expiry)
-- can only lower the count, which makes the check err towards admitting fewer, never more.
-- The count is taken from call_queue, which the triggers on `calls` keep in step within the
-- same transactions, so it is the count of calls IN_PROGRESS.
WITH capacity AS (
    SELECT greatest($1 - count(*), 0) AS free
    FROM call_queue
    WHERE status = 'IN_PROGRESS'
),
wanted AS (
    SELECT least($2, free) AS n FROM capacity
),
-- Walks the small queue table (see the migration that made it), oldest first, skipping
-- numbers already in progress, so a busy number never stalls the calls queued behind it.
-- One table and no join, so no misjudged row count (a table not yet analyzed) can turn it
-- into a scan of one table per row of the other. It takes more than it needs: some of these
-- calls may be locked (a PATCH, a cancel) and are passed over below.
queued AS MATERIALIZED (
    SELECT q.call_id
    FROM call_queue q
    WHERE q.status = 'PENDING'
      AND q.due_at <= now()
      AND NOT EXISTS (
          SELECT 1 FROM call_queue busy
          WHERE busy.status = 'IN_PROGRESS' AND busy.to_number = q.to_number
      )
    ORDER BY q.seq
    LIMIT (SELECT n * 2 + 4 FROM wanted)
),
-- Then locks the call rows themselves, by key, and re-checks them as they are once locked
-- (`calls` is the truth): still PENDING and due, its number not in progress. SKIP LOCKED
-- passes over calls a PATCH or cancel is holding. No ORDER BY or LIMIT here: with one, the
-- planner may walk `calls` in `seq` order instead, over every dead entry of the calls that
-- left PENDING, which is what call_queue is there to avoid; `chosen` keeps the oldest.
candidates AS MATERIALIZED (
    SELECT c.id, c.to_number, c.seq, c.next_attempt_at
    FROM calls c
    WHERE c.id = ANY (ARRAY(SELECT call_id FROM queued))
      AND c.status = 'PENDING'
      AND c.next_attempt_at <= now()
      AND NOT EXISTS (
          SELECT 1 FROM call_queue busy
          WHERE busy.status = 'IN_PROGRESS' AND busy.to_number = c.to_number
      )
    FOR UPDATE OF c SKIP LOCKED
),
chosen AS (
    SELECT id, seq, next_attempt_at AS due_at
    FROM (
        SELECT DISTINCT ON (to_number) id, seq, next_attempt_at
        FROM candidates
        ORDER BY to_number, seq
    ) one_per_number
    ORDER BY seq
    LIMIT (SELECT n FROM wanted)
),
claimed AS (
    UPDATE calls c
    SET status = 'IN_PROGRESS',
        attempts = c.attempts + 1,
        started_at = now(),
        next_attempt_at = NULL,
        external_call_id = NULL,
        updated_at = now()
    FROM chosen
    WHERE c.id = chosen.id
    RETURNING c.*
),
attempts AS (
    INSERT INTO call_attempts (call_id, attempt, lease_until)
    SELECT id, attempts, now() + make_interval(secs => $3)
    FROM claimed
    RETURNING id AS attempt_id, call_id
),
events AS (
    INSERT INTO call_events (call_id, attempt, kind)
    SELECT id, attempts, 'DIALED' FROM claimed
)
SELECT claimed.*, chosen.due_at, attempts.attempt_id
FROM claimed
JOIN chosen USING (id)
JOIN attempts ON attempts.call_id = claimed.id
ORDER BY claimed.seq
