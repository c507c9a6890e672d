-- What queue upkeep (src/db/upkeep.rs) decides on: call_queue's dead rows, live rows and
-- rows changed since its last ANALYZE, and whether some session holds the upkeep lock
-- already ($1, split into pg_locks' two oid halves), so a connection is spared then.
SELECT n_dead_tup, n_live_tup, n_mod_since_analyze,
       EXISTS (SELECT 1 FROM pg_locks
               WHERE locktype = 'advisory'
                 AND database = (SELECT oid FROM pg_database WHERE datname = current_database())
                 AND classid = ($1 >> 32)::oid AND objid = ($1 & 4294967295)::oid
                 AND objsubid = 1)
FROM pg_stat_user_tables
WHERE relid = 'call_queue'::regclass
