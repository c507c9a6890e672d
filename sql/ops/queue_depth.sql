-- Queue depth: calls in each status, the oldest of each, and the slots in use.
--   psql "$DATABASE_URL" -f sql/ops/queue_depth.sql
SELECT status, calls, oldest_created_at, oldest_age
FROM queue_depth
ORDER BY array_position(
    ARRAY['PENDING', 'IN_PROGRESS', 'COMPLETED', 'FAILED', 'EXPIRED', 'CANCELLED']::call_status[],
    status
);
