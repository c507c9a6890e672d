-- Takes over DIALING attempts whose lease ran out: the replica that claimed them died (or
-- lost the database) between claiming and recording the provider's answer. The new lease
-- ($1 seconds) makes the taker their owner; at most $2 at a time. The taker sends each one
-- again with the same Idempotency-Key, so the provider never places it twice (or, for a
-- vendor without idempotency keys, looks it up from when it was claimed). Also the
-- attempts whose answer was lost (left DIALING, their lease set to when to send again).
WITH abandoned AS (
    SELECT a.id
    FROM call_attempts a
    JOIN calls c ON c.id = a.call_id
    WHERE a.status = 'DIALING'
      AND a.lease_until < now()
      AND c.status = 'IN_PROGRESS'
      AND c.attempts = a.attempt
    ORDER BY a.lease_until
    LIMIT $2
    FOR UPDATE OF a SKIP LOCKED
),
taken AS (
    UPDATE call_attempts a
    SET lease_until = now() + make_interval(secs => $1),
        rescues = a.rescues + 1
    FROM abandoned
    WHERE a.id = abandoned.id
    RETURNING a.id, a.call_id, a.attempt, a.rescues, a.claimed_at
),
events AS (
    INSERT INTO call_events (call_id, attempt, kind, detail)
    SELECT call_id, attempt, 'RESCUED', jsonb_build_object('rescues', rescues) FROM taken
)
SELECT id, call_id, attempt, rescues, claimed_at FROM taken
