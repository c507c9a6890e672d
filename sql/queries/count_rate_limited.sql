-- The 429s attempt $2 of call $1 got so far (each left a RATE_LIMITED row).
SELECT count(*) FROM call_attempts WHERE call_id = $1 AND attempt = $2 AND status = 'RATE_LIMITED'
