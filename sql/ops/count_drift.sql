-- Differences between the counts the database keeps (calls by status, and each campaign's
-- calls by status: what /api/v1/metrics, /metrics and the lists' totals read) and a scan of
-- `calls`; there should be none. Like queue_drift.sql, only a write that skips triggers
-- (session_replication_role = replica, ALTER TABLE calls DISABLE TRIGGER, a restore with
-- --disable-triggers) or that writes the count tables by hand can leave some. The scan reads
-- every call: seconds on millions of them. Run with -v mend=1 to mend them: it holds writes to
-- calls for one scan and counts again.
--   psql "$DATABASE_URL" -f sql/ops/count_drift.sql
--   psql "$DATABASE_URL" -v mend=1 -f sql/ops/count_drift.sql
\if :{?mend}
BEGIN;
LOCK TABLE calls IN SHARE MODE;
LOCK TABLE call_counts, call_count_changes, campaign_counts, campaign_count_changes
    IN EXCLUSIVE MODE;
DELETE FROM call_count_changes;
DELETE FROM call_counts;
INSERT INTO call_counts (status, calls) SELECT status, count(*) FROM calls GROUP BY status;
DELETE FROM campaign_count_changes;
DELETE FROM campaign_counts;
INSERT INTO campaign_counts (campaign_id, status, calls)
SELECT campaign_id, status, count(*) FROM calls
WHERE campaign_id IS NOT NULL GROUP BY campaign_id, status;
COMMIT;
\endif
WITH kept AS (
    SELECT NULL::uuid AS campaign_id, status, sum(calls) AS calls
    FROM (SELECT status, calls FROM call_counts
          UNION ALL SELECT status, delta FROM call_count_changes) k
    GROUP BY status
    UNION ALL
    SELECT campaign_id, status, sum(calls)
    FROM (SELECT campaign_id, status, calls FROM campaign_counts
          UNION ALL SELECT campaign_id, status, delta FROM campaign_count_changes) k
    GROUP BY campaign_id, status
),
scanned AS (
    SELECT NULL::uuid AS campaign_id, status, count(*) AS calls FROM calls GROUP BY status
    UNION ALL
    SELECT campaign_id, status, count(*) FROM calls
    WHERE campaign_id IS NOT NULL GROUP BY campaign_id, status
)
SELECT coalesce(k.campaign_id::text, 'all calls') AS counts_of,
       coalesce(k.status, s.status) AS status,
       coalesce(k.calls, 0) AS kept,
       coalesce(s.calls, 0) AS scanned
FROM kept k
FULL JOIN scanned s
  ON s.campaign_id IS NOT DISTINCT FROM k.campaign_id AND s.status = k.status
WHERE coalesce(k.calls, 0) <> coalesce(s.calls, 0)
ORDER BY 1, 2;
