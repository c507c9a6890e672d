-- Differences between call_queue and the open calls of `calls`, which its triggers keep
-- equal; there should be none. A write that skips triggers (session_replication_role =
-- replica, ALTER TABLE calls DISABLE TRIGGER, a restore with --disable-triggers) or that
-- writes call_queue by hand can leave some: a call missing here is never dialed, a row left
-- here holds a slot. Run with -v mend=1 to mend them: it locks calls against writers (a
-- moment: one pass over the open calls) and makes call_queue match.
--   psql "$DATABASE_URL" -f sql/ops/queue_drift.sql
--   psql "$DATABASE_URL" -v mend=1 -f sql/ops/queue_drift.sql
\if :{?mend}
BEGIN;
LOCK TABLE calls IN SHARE ROW EXCLUSIVE MODE;
DELETE FROM call_queue q
WHERE NOT EXISTS (
    SELECT 1 FROM calls c
    WHERE c.id = q.call_id
      AND c.status IN ('PENDING', 'IN_PROGRESS')
      AND (c.seq, c.to_number, c.status, c.next_attempt_at,
           coalesce(c.campaign_id, '00000000-0000-0000-0000-000000000000'))
          IS NOT DISTINCT FROM (q.seq, q.to_number, q.status, q.due_at, q.lane)
);
INSERT INTO call_queue (call_id, seq, to_number, status, due_at, lane)
SELECT id, seq, to_number, status, next_attempt_at,
       coalesce(campaign_id, '00000000-0000-0000-0000-000000000000')
FROM calls
WHERE status IN ('PENDING', 'IN_PROGRESS')
ON CONFLICT (call_id) DO NOTHING;
COMMIT;
\endif
SELECT 'missing from call_queue' AS difference, c.id AS call_id, c.status::text, c.to_number
FROM calls c
WHERE c.status IN ('PENDING', 'IN_PROGRESS')
  AND NOT EXISTS (SELECT 1 FROM call_queue q WHERE q.call_id = c.id)
UNION ALL
SELECT 'stale in call_queue', q.call_id, q.status::text, q.to_number
FROM call_queue q
WHERE NOT EXISTS (
    SELECT 1 FROM calls c
    WHERE c.id = q.call_id
      AND c.status IN ('PENDING', 'IN_PROGRESS')
      AND (c.seq, c.to_number, c.status, c.next_attempt_at,
           coalesce(c.campaign_id, '00000000-0000-0000-0000-000000000000'))
          IS NOT DISTINCT FROM (q.seq, q.to_number, q.status, q.due_at, q.lane)
);
