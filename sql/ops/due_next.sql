-- What is due next: the PENDING calls in the order the dispatcher takes them, and whether
-- each could be claimed now (due, and its number free).
--   psql "$DATABASE_URL" -f sql/ops/due_next.sql
SELECT id, to_number, attempts, next_attempt_at, due, number_busy,
       due AND NOT number_busy AS claimable_now,
       last_error
FROM calls_waiting
LIMIT 50;
