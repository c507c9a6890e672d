-- Vendor dialects (AI_CALL_PROVIDER twilio, retell, vapi, bland): reconciliation, the
-- look-up of a call whose end never arrived.

-- When the attempt was last looked up at the provider, and how often: the sweeper looks up
-- an ACCEPTED attempt with no final webhook once RECONCILE_AFTER has passed since it was
-- accepted, then again each RECONCILE_AFTER, until it ends or its call expires.
ALTER TABLE call_attempts ADD COLUMN reconciled_at timestamptz;
ALTER TABLE call_attempts ADD COLUMN reconciliations integer NOT NULL DEFAULT 0;

-- The reconciler's scan: only attempts the provider holds, a set no larger than the cap.
CREATE INDEX call_attempts_accepted_by_age
    ON call_attempts ((COALESCE(reconciled_at, accepted_at))) WHERE status = 'ACCEPTED';

-- RECONCILED: what a look-up at the provider found, applied as its webhook would have been.
ALTER TABLE call_events DROP CONSTRAINT call_events_kind_check;
ALTER TABLE call_events ADD CONSTRAINT call_events_kind_check CHECK (kind IN (
    'CREATED', 'UPDATED', 'CANCELLED', 'DIALED', 'ACCEPTED', 'DIAL_FAILED', 'DIAL_UNKNOWN',
    'RATE_LIMITED', 'WEBHOOK_RECEIVED', 'RECONCILED', 'RETRY_SCHEDULED', 'COMPLETED',
    'FAILED', 'EXPIRED', 'RESCUED'
));

-- The operator's view of the calls in flight shows the look-ups too (columns added at the
-- end, as CREATE OR REPLACE VIEW requires).
CREATE OR REPLACE VIEW calls_in_flight AS
SELECT c.id,
       c.to_number,
       c.attempts AS attempt,
       a.status AS attempt_status,
       COALESCE(a.provider_call_id, c.external_call_id) AS provider_call_id,
       c.started_at,
       now() - c.started_at AS in_flight_for,
       a.lease_until,
       a.rescues,
       a.reconciled_at,
       a.reconciliations
FROM calls c
LEFT JOIN call_attempts a
       ON a.call_id = c.id AND a.attempt = c.attempts AND a.status <> 'RATE_LIMITED'
WHERE c.status = 'IN_PROGRESS'
ORDER BY c.started_at;
