-- Records the provider's 2xx for attempt $2 of call $1, with its callId $3 (may be NULL):
-- the attempt becomes ACCEPTED (unless a webhook already settled it) and learns its id, the
-- call learns it too if this is its current attempt, and the timeline says so. One
-- statement: the call row is locked first (the `call` CTE is read before any attempt row is
-- touched), like every other writer does. Returns the number of attempts updated (0 or 1).
WITH call AS MATERIALIZED (
    SELECT id, attempts FROM calls WHERE id = $1 FOR UPDATE
),
attempt AS (
    UPDATE call_attempts a
    SET provider_call_id = COALESCE(a.provider_call_id, $3),
        status = CASE WHEN a.status = 'DIALING' THEN 'ACCEPTED' ELSE a.status END,
        accepted_at = COALESCE(a.accepted_at, now())
    FROM call
    WHERE a.call_id = call.id AND a.attempt = $2 AND a.status <> 'RATE_LIMITED'
    RETURNING a.id
),
current AS (
    UPDATE calls c
    SET external_call_id = $3, updated_at = now()
    FROM call
    WHERE c.id = call.id
      AND call.attempts = $2
      AND c.external_call_id IS NULL
      AND $3::text IS NOT NULL
      AND EXISTS (SELECT 1 FROM attempt)
),
events AS (
    INSERT INTO call_events (call_id, attempt, kind, detail)
    SELECT $1, $2, 'ACCEPTED', jsonb_build_object('providerCallId', $3::text)
    FROM attempt
)
SELECT count(*) FROM attempt
