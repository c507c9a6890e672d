-- The retry history of a call: every attempt with its outcome, then the whole timeline.
--   psql "$DATABASE_URL" -v call_id=<uuid> -f sql/ops/retry_history.sql
SELECT attempt, status, provider_call_id, error, claimed_at, accepted_at, ended_at, lasted, rescues
FROM call_attempt_history
WHERE call_id = :'call_id';

SELECT at, attempt, kind, detail
FROM call_events
WHERE call_id = :'call_id'
ORDER BY id;
