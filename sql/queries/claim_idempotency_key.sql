-- Takes an Idempotency-Key for a call created in the same transaction. A key younger than
-- 24 hours belongs to its first call and returns no row (the caller then replays or refuses);
-- an older one is taken over. A concurrent holder of the same key makes this wait for its
-- commit, so two racing requests never both create a call.
INSERT INTO idempotency_keys (key, request_hash, call_id)
VALUES ($1, $2, $3)
ON CONFLICT (key) DO UPDATE
    SET request_hash = EXCLUDED.request_hash,
        call_id = EXCLUDED.call_id,
        created_at = now()
    WHERE idempotency_keys.created_at < now() - interval '24 hours'
RETURNING call_id
