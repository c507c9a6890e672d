-- Takes the attempts due for a look-up at the provider: ACCEPTED (the provider holds the
-- call), the current attempt of a call IN_PROGRESS, with no final webhook, accepted (or
-- last looked up) more than RECONCILE_AFTER ($1, seconds) ago, or whose call is about to
-- expire (in progress for more than CALL_TIMEOUT, $3 seconds, and not looked up in the last
-- second): a call is looked up once more before it may expire. At most $2 at a time. Marks
-- them looked up now, so that other replicas pass them by until RECONCILE_AFTER has gone
-- by again. Answers each attempt's call id, number and the provider's id for it.
WITH due AS (
    SELECT a.id
    FROM call_attempts a
    JOIN calls c ON c.id = a.call_id
    WHERE a.status = 'ACCEPTED'
      AND (COALESCE(a.reconciled_at, a.accepted_at) < now() - make_interval(secs => $1)
           OR (c.started_at < now() - make_interval(secs => $3)
               AND COALESCE(a.reconciled_at, a.accepted_at) < now() - interval '1 second'))
      AND a.provider_call_id IS NOT NULL
      AND a.final_webhook_at IS NULL
      AND c.status = 'IN_PROGRESS'
      AND c.attempts = a.attempt
    ORDER BY COALESCE(a.reconciled_at, a.accepted_at)
    LIMIT $2
    FOR UPDATE OF a SKIP LOCKED
)
UPDATE call_attempts a
SET reconciled_at = now(), reconciliations = a.reconciliations + 1
FROM due
WHERE a.id = due.id
RETURNING a.call_id, a.attempt, a.provider_call_id
