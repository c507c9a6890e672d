-- The dispatcher's working set, `call_queue` (the open calls, kept in step with `calls` by
-- triggers): its size, the dead rows waiting for vacuum, and when it was last vacuumed and
-- analyzed. The workers do both themselves, every second if need be, one worker at a time
-- (db::queue_upkeep);
-- `last_vacuum` far behind while `dead_rows` climbs means no worker is running, or the
-- database user the workers use does not own the table.
--   psql "$DATABASE_URL" -f sql/ops/queue_upkeep.sql
SELECT n_live_tup AS open_calls,
       n_dead_tup AS dead_rows,
       last_vacuum,
       last_autovacuum,
       last_analyze,
       last_autoanalyze,
       pg_size_pretty(pg_total_relation_size(relid)) AS size
FROM pg_stat_user_tables
WHERE relname = 'call_queue';
