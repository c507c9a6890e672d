-- What is in flight, and for how long: the IN_PROGRESS calls, longest first. An attempt
-- still DIALING past its lease belongs to a replica that died, or its dial's answer was
-- lost; the sweeper rescues it (with a vendor dialect: looks it up). `reconciliations`:
-- how often a vendor's call was looked up for want of its final webhook, the last time at
-- `last_looked_up`.
--   psql "$DATABASE_URL" -f sql/ops/in_flight.sql
SELECT id, to_number, attempt, attempt_status, provider_call_id,
       date_trunc('second', in_flight_for) AS in_flight_for,
       attempt_status = 'DIALING' AND lease_until < now() AS abandoned,
       rescues,
       reconciliations,
       date_trunc('second', reconciled_at) AS last_looked_up
FROM calls_in_flight
LIMIT 100;
