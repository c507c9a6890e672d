-- Throughput: calls ending per minute over the last hour, by final status.
--   psql "$DATABASE_URL" -f sql/ops/throughput.sql
SELECT minute, completed, failed, expired, cancelled, ended
FROM throughput_per_minute
WHERE minute > now() - interval '1 hour';
