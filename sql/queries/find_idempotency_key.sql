-- The request an Idempotency-Key answered within the last 24 hours, if any: the hash of
-- that request and the call (or, for a batch, the calls) it created.
--   $1 scope (SHA-256 of the API key; empty without API_KEYS)    $2 the key
SELECT request_hash, call_id, call_ids
FROM idempotency_keys
WHERE scope = $1 AND key = $2 AND created_at >= now() - interval '24 hours'
