-- Takes an Idempotency-Key for the calls created in the same transaction: $1 the client's
-- scope (SHA-256 of its API key, or empty), $2 the key, $3 the request's hash, $4 the first
-- call, $5 all of them in order (one for a single create). A key younger than 24 hours
-- belongs to its first request and returns no row (the caller then replays or refuses); an
-- older one is taken over. A concurrent holder of the same key makes this wait for its
-- commit, so two racing requests never both create calls.
INSERT INTO idempotency_keys (scope, key, request_hash, call_id, call_ids)
VALUES ($1, $2, $3, $4, $5)
ON CONFLICT (scope, key) DO UPDATE
    SET request_hash = EXCLUDED.request_hash,
        call_id = EXCLUDED.call_id,
        call_ids = EXCLUDED.call_ids,
        created_at = now()
    WHERE idempotency_keys.created_at < now() - interval '24 hours'
RETURNING call_id
