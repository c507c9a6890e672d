-- The first half of a claim: picks and locks the due PENDING calls the claim may take, lane
-- by lane, with what the schedule's rules need to know about each (domain::schedule::Rules::
-- admit): its own timing, its campaign's, the suppression in force for its number, and its
-- number's attempts of the last 24 hours. db::claim then admits them in turn (priority, then
-- round-robin between the lanes of one priority) and claim_apply.sql claims those admitted.
--   $1 MAX_CONCURRENT_CALLS   $2 most calls to claim
--   $3 whether MAX_ATTEMPTS_PER_NUMBER_PER_DAY is set (the numbers' attempts are read then)
--   $4 lanes this claim passes over (their calls were all held back in an earlier round)
--
-- Lanes: each ACTIVE campaign that has started is one, and the calls of no campaign are one
-- (the nil UUID, priority 5). A paused or cancelled campaign's lane is not read at all.
--
-- Run only inside a transaction that holds the claim lock (pg_advisory_xact_lock), which
-- makes the counts exact: claims are the only way into IN_PROGRESS, so while one claimer
-- holds the lock nobody else can add to the count; the lock is released only after the
-- previous holder's commit is visible, and this statement's snapshot is taken after the
-- lock was granted, so it sees every earlier claim (and this transaction's own). Concurrent
-- releases (webhooks, expiry) can only lower the counts, which makes the checks err towards
-- admitting fewer, never more. The counts are taken from call_queue, which the triggers on
-- `calls` keep in step within the same transactions, so they are the counts of calls
-- IN_PROGRESS, in all and per campaign (its lane), counted once (`busy`). A pause or cancel takes the claim lock
-- too, so no claim that began before it commits after it. The same lock makes the daily
-- count per number exact: only claims add attempts. Time is `statement_timestamp()`, taken
-- after the lock was granted: `now()` is the transaction's start, before the wait for the
-- lock, and a call judged by it could be dialed after its window closed or its deadline
-- passed by as long as that wait.
WITH busy AS MATERIALIZED (
    SELECT lane, count(*) AS n FROM call_queue WHERE status = 'IN_PROGRESS' GROUP BY lane
),
wanted AS (
    SELECT least($2, greatest($1 - coalesce(sum(n), 0), 0))::bigint AS n FROM busy
),
lanes AS (
    SELECT '00000000-0000-0000-0000-000000000000'::uuid AS lane, 5::smallint AS priority,
           (SELECT n FROM wanted) AS lane_free,
           NULL::text AS window_hours, NULL::text AS window_days,
           NULL::timestamptz AS start_at, NULL::timestamptz AS end_at
    UNION ALL
    SELECT k.id, k.priority,
           least((SELECT n FROM wanted),
                 coalesce(k.max_concurrent_calls - coalesce(b.n, 0), (SELECT n FROM wanted))),
           k.window_hours, k.window_days, k.start_at, k.end_at
    FROM campaigns k
    LEFT JOIN busy b ON b.lane = k.id
    WHERE k.status = 'ACTIVE'
      AND (k.start_at IS NULL OR k.start_at <= statement_timestamp())
),
-- The lanes with room and a call due to a number not in progress, and when each was last
-- served.
ready AS MATERIALIZED (
    SELECT l.*, coalesce(t.turn, 0) AS turn
    FROM lanes l
    LEFT JOIN dispatch_turns t ON t.lane = l.lane
    WHERE l.lane_free > 0
      AND l.lane <> ALL ($4::uuid[])
      -- A scalar subquery, not EXISTS: the planner would turn EXISTS into a join over the
      -- whole queue; this is a walk of the lane's index from its first due call.
      AND (
          SELECT true FROM call_queue q
          WHERE q.lane = l.lane AND q.status = 'PENDING' AND q.due_at <= statement_timestamp()
            AND NOT EXISTS (
                SELECT 1 FROM call_queue busy
                WHERE busy.status = 'IN_PROGRESS' AND busy.to_number = q.to_number
            )
          ORDER BY q.due_at, q.seq
          LIMIT 1
      )
),
-- How many calls to read of each lane: the free slots dealt out one per lane in turn, the
-- highest priority first, then the lane served longest ago.
quota AS (
    SELECT lane, count(*) AS n
    FROM (
        SELECT r.lane
        FROM ready r CROSS JOIN LATERAL generate_series(1, r.lane_free) AS k
        ORDER BY r.priority DESC, k, r.turn, r.lane
        LIMIT (SELECT n FROM wanted)
    ) slots
    GROUP BY lane
),
-- Walks each lane of the small queue table (see the migration that made it) in due order,
-- then oldest first, skipping numbers already in progress, so a busy number never stalls
-- the calls queued behind it, and the calls waiting for later (their window, their backoff)
-- are never read at all. It takes more than it needs: some of these calls may be locked (a
-- PATCH, a cancel) and are passed over below, some may be held back by the schedule.
queued AS MATERIALIZED (
    SELECT x.call_id, quota.lane
    FROM quota CROSS JOIN LATERAL (
        SELECT q.call_id
        FROM call_queue q
        WHERE q.lane = quota.lane
          AND q.status = 'PENDING'
          AND q.due_at <= statement_timestamp()
          AND NOT EXISTS (
              SELECT 1 FROM call_queue busy
              WHERE busy.status = 'IN_PROGRESS' AND busy.to_number = q.to_number
          )
        ORDER BY q.due_at, q.seq
        LIMIT quota.n + greatest(quota.n, 2)
    ) x
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
       r.lane,
       r.priority,
       r.turn,
       r.lane_free,
       qu.n AS quota,
       (SELECT array_agg(lane) FROM quota) AS quota_lanes,
       r.window_hours,
       r.window_days,
       r.start_at,
       r.end_at,
       (SELECT n FROM wanted) AS free,
       (SELECT count(*) FROM ready) AS ready_lanes,
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
JOIN queued q ON q.call_id = cand.id
JOIN ready r ON r.lane = q.lane
JOIN quota qu ON qu.lane = q.lane
LEFT JOIN suppressions s
       ON s.number = cand.to_number AND (s.expires_at IS NULL OR s.expires_at > statement_timestamp())
ORDER BY r.priority DESC, r.turn, r.lane, cand.next_attempt_at, cand.seq
