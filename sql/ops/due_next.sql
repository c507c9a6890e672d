-- What is due next: the PENDING calls in the order the dispatcher takes them (the order they
-- fall due, then oldest first), whether each could be claimed now (due, its number free,
-- not suppressed, its notAfter not passed), and what its schedule waits for: `waiting_for` is NOT_BEFORE,
-- CALLING_WINDOW, DAILY_LIMIT or DEADLINE when the schedule moved it, null when it is due as
-- created or as its backoff says. The claim still checks a call's calling window, deadline,
-- suppression and daily limit when it reaches it; this query cannot compute the window.
--   psql "$DATABASE_URL" -f sql/ops/due_next.sql
SELECT id, to_number, attempts, next_attempt_at, due, number_busy, suppressed,
       due AND NOT number_busy AND NOT suppressed
           AND (not_after IS NULL OR not_after > now()) AS claimable_now,
       waiting_for,
       not_after,
       last_error
FROM calls_waiting
ORDER BY next_attempt_at, seq
LIMIT 50;
