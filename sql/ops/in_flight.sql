-- What is in flight, and for how long: the IN_PROGRESS calls, longest first. An attempt
-- still DIALING past its lease belongs to a replica that died; the sweeper rescues it.
--   psql "$DATABASE_URL" -f sql/ops/in_flight.sql
SELECT id, to_number, attempt, attempt_status, provider_call_id,
       date_trunc('second', in_flight_for) AS in_flight_for,
       attempt_status = 'DIALING' AND lease_until < now() AS abandoned,
       rescues
FROM calls_in_flight
LIMIT 100;
