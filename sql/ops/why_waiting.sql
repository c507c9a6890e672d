-- Why a given call is waiting (or not): its status, and for a PENDING call the first thing
-- holding it back: its backoff, its number busy with another call, or the cap being full.
--   psql "$DATABASE_URL" -v call_id=<uuid> -v cap=30 -f sql/ops/why_waiting.sql
-- `cap` is the service's MAX_CONCURRENT_CALLS.
WITH slots AS (
    SELECT count(*) AS in_progress FROM calls WHERE status = 'IN_PROGRESS'
)
SELECT c.id,
       c.status,
       c.to_number,
       c.attempts,
       CASE
           WHEN c.status <> 'PENDING' THEN 'not waiting: ' || c.status
           WHEN c.next_attempt_at > now() THEN
               'backoff: due in ' || date_trunc('second', c.next_attempt_at - now())
               || COALESCE(' after: ' || c.last_error, '')
           WHEN w.number_busy THEN 'number busy: another call to ' || c.to_number || ' is in progress'
           WHEN s.in_progress >= :cap THEN 'cap full: ' || s.in_progress || ' of ' || :cap || ' slots in use'
           ELSE 'claimable now: ' || (
               SELECT count(*) FROM calls_waiting ahead
               WHERE ahead.seq < c.seq AND ahead.due AND NOT ahead.number_busy
           ) || ' claimable calls ahead of it'
       END AS why
FROM calls c
CROSS JOIN slots s
LEFT JOIN calls_waiting w ON w.id = c.id
WHERE c.id = :'call_id';
