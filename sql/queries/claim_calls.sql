-- The first half of a claim: picks and locks the due PENDING calls the claim may take,
-- in the order they fell due and then oldest first, at most one per number in progress,
-- with what the schedule's rules need to know about each (domain::schedule::Rules::admit):
-- its own timing, the suppression in force for its number, and its number's attempts of
-- the last 24 hours. `free` is how many slots the cap leaves. The second half,
-- claim_apply.sql, claims the calls admitted and moves the others on.
--   $1 MAX_CONCURRENT_CALLS   $2 most calls to claim
--   $3 whether MAX_ATTEMPTS_PER_NUMBER_PER_DAY is set (the numbers' attempts are read then)
--
-- Run only inside a transaction that holds the claim lock (pg_advisory_xact_lock), which
-- makes the count exact: claims are the only way into IN_PROGRESS, so while one claimer
-- holds the lock nobody else can add to the count; the lock is released only after the
-- previous holder's commit is visible, and this statement's snapshot is taken after the
-- lock was granted, so it sees every earlier claim (and this transaction's own). Concurrent
-- releases (webhooks, expiry) can only lower the count, which makes the check err towards
-- admitting fewer, never more. The count is taken from call_queue, which the triggers on
-- `calls` keep in step within the same transactions, so it is the count of calls
-- IN_PROGRESS. The same lock makes the daily count per number exact: only claims add
-- attempts. Time is `statement_timestamp()`, taken after the lock was granted: `now()` is
-- the transaction's start, before the wait for the lock, and a call judged by it could be
-- dialed after its window closed or its deadline passed by as long as that wait.
WITH capacity AS (
    SELECT greatest($1 - count(*), 0) AS free
    FROM call_queue
    WHERE status = 'IN_PROGRESS'
),
wanted AS (
    SELECT least($2, free) AS n FROM capacity
),
-- Walks the small queue table (see the migration that made it) in due order, skipping
-- numbers already in progress, so a busy number never stalls the calls queued behind it,
-- and the calls waiting for later (their window, their backoff) are never read at all.
-- One table and no join, so no misjudged row count (a table not yet analyzed) can turn it
-- into a scan of one table per row of the other. It takes more than it needs: some of these
-- calls may be locked (a PATCH, a cancel) and are passed over below.
queued AS MATERIALIZED (
    SELECT q.call_id
    FROM call_queue q
    WHERE q.status = 'PENDING'
      AND q.due_at <= statement_timestamp()
      AND NOT EXISTS (
          SELECT 1 FROM call_queue busy
          WHERE busy.status = 'IN_PROGRESS' AND busy.to_number = q.to_number
      )
    ORDER BY q.due_at, q.seq
    LIMIT (SELECT n * 2 + 4 FROM wanted)
),
-- Then locks the call rows themselves, by key, and re-checks them as they are once locked
-- (`calls` is the truth): still PENDING and due, its number not in progress. SKIP LOCKED
-- passes over calls a PATCH or cancel is holding. No ORDER BY or LIMIT here: with one, the
-- planner may walk `calls` in another order instead, over every dead entry of the calls
-- that left PENDING, which is what call_queue is there to avoid.
candidates AS MATERIALIZED (
    SELECT c.id, c.to_number, c.seq, c.next_attempt_at, c.timezone, c.not_before, c.not_after
    FROM calls c
    WHERE c.id = ANY (ARRAY(SELECT call_id FROM queued))
      AND c.status = 'PENDING'
      AND c.next_attempt_at <= statement_timestamp()
      AND NOT EXISTS (
          SELECT 1 FROM call_queue busy
          WHERE busy.status = 'IN_PROGRESS' AND busy.to_number = c.to_number
      )
    FOR UPDATE OF c SKIP LOCKED
)
SELECT cand.id,
       cand.to_number,
       cand.next_attempt_at AS due_at,
       cand.timezone,
       cand.not_before,
       cand.not_after,
       (SELECT n FROM wanted) AS free,
       statement_timestamp() AS now,
       s.reason AS suppressed,
       CASE WHEN $3 THEN ARRAY(
           SELECT a.claimed_at
           FROM call_attempts a
           WHERE a.to_number = cand.to_number
             AND a.claimed_at > statement_timestamp() - interval '24 hours'
             AND a.status <> 'RATE_LIMITED'
           ORDER BY a.claimed_at
       ) ELSE '{}' END AS recent_dials
FROM candidates cand
LEFT JOIN suppressions s
       ON s.number = cand.to_number AND (s.expires_at IS NULL OR s.expires_at > statement_timestamp())
ORDER BY cand.next_attempt_at, cand.seq
