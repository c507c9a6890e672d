-- An attempt whose dial outcome is unknown stays DIALING (its slot taken); its lease is set
-- to run out in $2 seconds, when the sweeper takes it over and sends it again with the
-- same Idempotency-Key.
--   $1 attempt row id
UPDATE call_attempts SET lease_until = now() + make_interval(secs => $2) WHERE id = $1
