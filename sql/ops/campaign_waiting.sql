-- What each campaign with pending calls is waiting for: paused, cancelled (its calls are
-- being cancelled), not started, ended (its calls are expiring), its own cap full, or its
-- calls' own waits (their calling window, notBefore, daily limit, backoff), and how many
-- are due now. Reads the queue (open calls only), not the calls table.
--   psql "$DATABASE_URL" -f sql/ops/campaign_waiting.sql
WITH queued AS (
    SELECT q.lane,
           count(*) FILTER (WHERE q.status = 'IN_PROGRESS') AS in_progress,
           count(*) FILTER (WHERE q.status = 'PENDING') AS pending,
           count(*) FILTER (WHERE q.status = 'PENDING' AND q.due_at <= now()) AS due_now,
           min(q.due_at) FILTER (WHERE q.status = 'PENDING') AS next_due
    FROM call_queue q
    GROUP BY q.lane
),
-- The calls not due yet, by what they wait for (BACKOFF: a retry's delay).
waits AS (
    SELECT campaign_id, string_agg(why || ' ' || n, ', ' ORDER BY why) AS later
    FROM (
        SELECT c.campaign_id, coalesce(c.waiting_for, 'BACKOFF') AS why, count(*) AS n
        FROM call_queue q
        JOIN calls c ON c.id = q.call_id
        WHERE q.status = 'PENDING' AND q.due_at > now()
          AND q.lane <> '00000000-0000-0000-0000-000000000000'
        GROUP BY 1, 2
    ) w
    GROUP BY campaign_id
)
SELECT k.id,
       k.name,
       k.status,
       k.priority,
       coalesce(q.in_progress, 0) AS in_progress,
       k.max_concurrent_calls AS cap,
       coalesce(q.pending, 0) AS pending,
       coalesce(q.due_now, 0) AS due_now,
       q.next_due,
       CASE
           WHEN k.status = 'PAUSED' THEN 'paused: none of its calls is dialed until it is resumed'
           WHEN k.status = 'CANCELLED' THEN 'cancelled: its pending calls are being cancelled'
           WHEN k.end_at <= now() THEN 'ended at ' || k.end_at || ': its pending calls are expiring'
           WHEN k.start_at > now() THEN 'starts at ' || k.start_at
           WHEN k.max_concurrent_calls IS NOT NULL AND coalesce(q.in_progress, 0) >= k.max_concurrent_calls
               THEN 'its cap is full: ' || q.in_progress || ' of ' || k.max_concurrent_calls
           WHEN coalesce(q.due_now, 0) > 0 THEN 'calls due now: waiting for a free slot (or being dialed)'
           WHEN coalesce(q.pending, 0) > 0 THEN 'its calls wait for later: due next ' || q.next_due
           ELSE 'nothing pending'
       END AS waiting_for,
       w.later AS not_due_yet
FROM campaigns k
LEFT JOIN queued q ON q.lane = k.id
LEFT JOIN waits w ON w.campaign_id = k.id
WHERE k.status IN ('ACTIVE', 'PAUSED') OR coalesce(q.pending, 0) > 0
ORDER BY k.priority DESC, k.seq;
