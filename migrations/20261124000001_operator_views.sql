-- Views for operators in psql (see sql/ops/ for the queries built on them).

-- How many calls are in each status, and how old the oldest of each is.
CREATE VIEW queue_depth AS
SELECT status,
       count(*) AS calls,
       min(created_at) AS oldest_created_at,
       now() - min(created_at) AS oldest_age
FROM calls
GROUP BY status;

-- What the provider holds right now, longest first: each IN_PROGRESS call, its current
-- attempt, and how long it has been in flight.
CREATE VIEW calls_in_flight AS
SELECT c.id,
       c.to_number,
       c.attempts AS attempt,
       a.status AS attempt_status,
       COALESCE(a.provider_call_id, c.external_call_id) AS provider_call_id,
       c.started_at,
       now() - c.started_at AS in_flight_for,
       a.lease_until,
       a.rescues
FROM calls c
LEFT JOIN call_attempts a
       ON a.call_id = c.id AND a.attempt = c.attempts AND a.status <> 'RATE_LIMITED'
WHERE c.status = 'IN_PROGRESS'
ORDER BY c.started_at;

-- The PENDING calls in the order the dispatcher takes them (oldest first), with what keeps
-- each one waiting: its backoff, or its number being busy with another call. (The cap is
-- configuration; sql/ops/why_waiting.sql takes it as a variable.)
CREATE VIEW calls_waiting AS
SELECT c.id,
       c.seq,
       c.to_number,
       c.attempts,
       c.next_attempt_at,
       c.next_attempt_at <= now() AS due,
       EXISTS (
           SELECT 1 FROM calls busy
           WHERE busy.status = 'IN_PROGRESS' AND busy.to_number = c.to_number
       ) AS number_busy,
       c.last_error
FROM calls c
WHERE c.status = 'PENDING'
ORDER BY c.seq;

-- Every dial attempt of every call, with its outcome.
CREATE VIEW call_attempt_history AS
SELECT a.call_id,
       a.attempt,
       a.status,
       a.provider_call_id,
       a.error,
       a.claimed_at,
       a.accepted_at,
       a.ended_at,
       a.ended_at - a.claimed_at AS lasted,
       a.rescues
FROM call_attempts a
ORDER BY a.call_id, a.id;

-- Calls reaching a final status per minute, by status, over the last 24 hours.
CREATE INDEX calls_by_completion ON calls (completed_at) WHERE completed_at IS NOT NULL;

CREATE VIEW throughput_per_minute AS
SELECT date_trunc('minute', completed_at) AS minute,
       count(*) FILTER (WHERE status = 'COMPLETED') AS completed,
       count(*) FILTER (WHERE status = 'FAILED') AS failed,
       count(*) FILTER (WHERE status = 'EXPIRED') AS expired,
       count(*) FILTER (WHERE status = 'CANCELLED') AS cancelled,
       count(*) AS ended
FROM calls
WHERE completed_at > now() - interval '24 hours'
GROUP BY 1
ORDER BY 1 DESC;
