-- Records the provider's 2xx for attempts: the attempt row $2[i] of call $1[i], with its
-- callId $3[i] (may be NULL). Each attempt becomes ACCEPTED (unless a webhook already settled
-- it) and learns its id, the call learns it too if this is its current attempt, and the
-- timeline says so. One statement for any number of answers (the dispatcher gathers the
-- answers that arrive together). Attempts are named by row, not by number: after the
-- vendor's concurrency limit refused one, its number is claimed again as another row, which
-- a late answer to the first must never touch. The call rows are locked first, in id order,
-- like every other writer that locks several calls, so two such statements never deadlock
-- (attempt rows are only ever locked by whoever holds their call's lock). Two answers for
-- one attempt in one batch (its dialer's and a rescuer's resend) count as the first of them,
-- as they would one after the other. Returns the number of attempts updated.
WITH input AS (
    SELECT DISTINCT ON (attempt_id) call_id, attempt_id, provider_call_id
    FROM unnest($1::uuid[], $2::bigint[], $3::text[])
        WITH ORDINALITY AS i (call_id, attempt_id, provider_call_id, ord)
    ORDER BY attempt_id, ord
),
call AS MATERIALIZED (
    SELECT id, attempts FROM calls
    WHERE id IN (SELECT call_id FROM input)
    ORDER BY id
    FOR UPDATE
),
attempt AS (
    UPDATE call_attempts a
    SET provider_call_id = COALESCE(a.provider_call_id, i.provider_call_id),
        status = CASE WHEN a.status = 'DIALING' THEN 'ACCEPTED' ELSE a.status END,
        accepted_at = COALESCE(a.accepted_at, now())
    FROM input i JOIN call ON call.id = i.call_id
    WHERE a.id = i.attempt_id AND a.call_id = i.call_id AND a.status <> 'RATE_LIMITED'
    RETURNING a.id, a.call_id, a.attempt, call.attempts AS current, i.provider_call_id
),
current AS (
    UPDATE calls c
    SET external_call_id = attempt.provider_call_id, updated_at = now()
    FROM attempt
    WHERE c.id = attempt.call_id
      AND attempt.current = attempt.attempt
      AND c.external_call_id IS NULL
      AND attempt.provider_call_id IS NOT NULL
),
events AS (
    INSERT INTO call_events (call_id, attempt, kind, detail)
    SELECT call_id, attempt, 'ACCEPTED', jsonb_build_object('providerCallId', provider_call_id)
    FROM attempt
)
SELECT count(*) FROM attempt
