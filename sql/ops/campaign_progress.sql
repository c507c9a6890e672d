-- Each campaign's progress, newest first: its status, priority and cap, its calls by
-- status (the counts the database keeps: folded counts plus the changes not yet folded),
-- and the share of its calls that are final.
--   psql "$DATABASE_URL" -f sql/ops/campaign_progress.sql
WITH counted AS (
    SELECT campaign_id, status, sum(calls) AS calls
    FROM (
        SELECT campaign_id, status, calls FROM campaign_counts
        UNION ALL
        SELECT campaign_id, status, delta FROM campaign_count_changes
    ) c
    GROUP BY campaign_id, status
),
by_campaign AS (
    SELECT campaign_id,
           sum(calls) FILTER (WHERE status = 'PENDING') AS pending,
           sum(calls) FILTER (WHERE status = 'IN_PROGRESS') AS in_progress,
           sum(calls) FILTER (WHERE status = 'COMPLETED') AS completed,
           sum(calls) FILTER (WHERE status = 'FAILED') AS failed,
           sum(calls) FILTER (WHERE status = 'EXPIRED') AS expired,
           sum(calls) FILTER (WHERE status = 'CANCELLED') AS cancelled,
           sum(calls) AS total
    FROM counted
    GROUP BY campaign_id
)
SELECT k.id,
       k.name,
       k.status,
       k.priority,
       k.max_concurrent_calls AS cap,
       coalesce(b.pending, 0) AS pending,
       coalesce(b.in_progress, 0) AS in_progress,
       coalesce(b.completed, 0) AS completed,
       coalesce(b.failed, 0) AS failed,
       coalesce(b.expired, 0) AS expired,
       coalesce(b.cancelled, 0) AS cancelled,
       coalesce(b.total, 0) AS total,
       CASE WHEN coalesce(b.total, 0) = 0 THEN NULL
            ELSE round(100.0 * (b.total - coalesce(b.pending, 0) - coalesce(b.in_progress, 0)) / b.total, 1)
       END AS percent_final,
       k.start_at,
       k.end_at,
       k.created_at
FROM campaigns k
LEFT JOIN by_campaign b ON b.campaign_id = k.id
ORDER BY k.seq DESC;
