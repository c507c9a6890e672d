-- The whole state of the service: calls, their dial attempts, their timeline, and the
-- idempotency keys of the create route. PostgreSQL is the only queue: a call is claimable
-- while it is PENDING and due, and is in progress while it is IN_PROGRESS.

CREATE TYPE call_status AS ENUM (
    'PENDING', 'IN_PROGRESS', 'COMPLETED', 'FAILED', 'EXPIRED', 'CANCELLED'
);

CREATE TABLE calls (
    id               uuid PRIMARY KEY,
    -- Creation order; the calls of one batch get consecutive values in batch order.
    -- "Oldest first" means lowest seq first.
    seq              bigint GENERATED ALWAYS AS IDENTITY UNIQUE,
    to_number        text NOT NULL CHECK (to_number ~ '^\+[1-9][0-9]{6,14}$'),
    script_id        text NOT NULL CHECK (script_id ~ '^[A-Za-z0-9_.:-]{1,128}$'),
    metadata         jsonb NOT NULL DEFAULT '{}' CHECK (jsonb_typeof(metadata) = 'object'),
    status           call_status NOT NULL DEFAULT 'PENDING',
    -- Dial attempts made so far; the attempt being dialed while IN_PROGRESS is this number.
    attempts         integer NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    external_call_id text,
    last_error       text,
    next_attempt_at  timestamptz,
    duration_sec     integer CHECK (duration_sec >= 0),
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now(),
    started_at       timestamptz,
    completed_at     timestamptz,
    CONSTRAINT calls_pending_is_due_sometime
        CHECK ((status = 'PENDING') = (next_attempt_at IS NOT NULL)),
    CONSTRAINT calls_in_progress_was_started
        CHECK (status <> 'IN_PROGRESS' OR (started_at IS NOT NULL AND attempts >= 1)),
    CONSTRAINT calls_final_has_completed_at
        CHECK ((status IN ('COMPLETED', 'FAILED', 'EXPIRED', 'CANCELLED')) = (completed_at IS NOT NULL))
);

-- Never two calls in progress to one number: a database fact, not a convention.
CREATE UNIQUE INDEX calls_one_in_progress_per_number
    ON calls (to_number) WHERE status = 'IN_PROGRESS';

-- The claim walks this, oldest first; it stays small and hot however many final rows exist.
CREATE INDEX calls_pending_oldest_first
    ON calls (seq) INCLUDE (next_attempt_at, to_number) WHERE status = 'PENDING';

-- When the next retry falls due, for the dispatcher's timer.
CREATE INDEX calls_pending_by_due
    ON calls (next_attempt_at) WHERE status = 'PENDING';

-- The sweeper's expiry scan.
CREATE INDEX calls_in_progress_by_start
    ON calls (started_at) WHERE status = 'IN_PROGRESS';

-- Listing, newest first, filtered by status or by number.
CREATE INDEX calls_by_status ON calls (status, seq);
CREATE INDEX calls_by_number ON calls (to_number, seq);

-- Claims and releases churn this table; vacuum it long before the default 20 % of dead rows.
ALTER TABLE calls SET (
    autovacuum_vacuum_scale_factor = 0.01,
    autovacuum_vacuum_threshold = 1000,
    autovacuum_analyze_scale_factor = 0.02,
    fillfactor = 90
);

-- One row per dial request sent (or about to be sent) to the provider.
CREATE TABLE call_attempts (
    id               bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    call_id          uuid NOT NULL REFERENCES calls (id) ON DELETE CASCADE,
    -- The attempt number, from 1; the provider sees it in `Idempotency-Key: {call id}:{attempt}`.
    attempt          integer NOT NULL CHECK (attempt >= 1),
    -- DIALING: claimed, the provider request may be under way; ACCEPTED: the provider
    -- answered 2xx; then one outcome. RATE_LIMITED (429) does not count as an attempt:
    -- the same number is dialed again later, so only it may repeat.
    status           text NOT NULL DEFAULT 'DIALING' CHECK (status IN (
                         'DIALING', 'ACCEPTED', 'COMPLETED', 'FAILED', 'RATE_LIMITED', 'EXPIRED'
                     )),
    provider_call_id text UNIQUE,
    error            text,
    claimed_at       timestamptz NOT NULL DEFAULT now(),
    -- While DIALING, the replica that claimed it owns it until then; after, the sweeper
    -- takes the attempt over and sends it again with the same Idempotency-Key.
    lease_until      timestamptz NOT NULL,
    rescues          integer NOT NULL DEFAULT 0,
    accepted_at      timestamptz,
    ended_at         timestamptz,
    CONSTRAINT call_attempts_final_has_ended_at
        CHECK ((status IN ('DIALING', 'ACCEPTED')) = (ended_at IS NULL))
);

CREATE UNIQUE INDEX call_attempts_each_number_once
    ON call_attempts (call_id, attempt) WHERE status <> 'RATE_LIMITED';

-- The sweeper's rescue scan: attempts whose dialer may have died.
CREATE INDEX call_attempts_dialing_by_lease
    ON call_attempts (lease_until) WHERE status = 'DIALING';

CREATE TABLE call_events (
    id       bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    call_id  uuid NOT NULL REFERENCES calls (id) ON DELETE CASCADE,
    attempt  integer CHECK (attempt >= 1),
    kind     text NOT NULL CHECK (kind IN (
                 'CREATED', 'UPDATED', 'CANCELLED', 'DIALED', 'ACCEPTED', 'DIAL_FAILED',
                 'RATE_LIMITED', 'WEBHOOK_RECEIVED', 'RETRY_SCHEDULED', 'COMPLETED', 'FAILED',
                 'EXPIRED', 'RESCUED'
             )),
    detail   jsonb NOT NULL DEFAULT '{}',
    at       timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX call_events_timeline ON call_events (call_id, id);

-- Idempotency-Key of POST /api/v1/calls: a repeat within 24 h answers the first call.
CREATE TABLE idempotency_keys (
    key          text PRIMARY KEY CHECK (length(key) BETWEEN 1 AND 255),
    request_hash bytea NOT NULL,
    call_id      uuid NOT NULL REFERENCES calls (id) ON DELETE CASCADE,
    created_at   timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX idempotency_keys_by_age ON idempotency_keys (created_at);

-- Wake the dispatchers when a call becomes claimable again or a slot frees: a statement-
-- level trigger, so one statement is one notification, sent at commit (and collapsed with
-- any other of the same transaction). Claims (rows becoming IN_PROGRESS) notify nobody, or
-- replicas would wake each other forever. New calls are announced by the API after its
-- commit instead (see db::Wakeup), keeping NOTIFY's commit-time lock off the create path.
-- Listeners treat notifications as hints.
CREATE FUNCTION notify_dispatchers() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF EXISTS (SELECT 1 FROM changed WHERE status <> 'IN_PROGRESS') THEN
        PERFORM pg_notify('call_orchestrator_wakeup', '');
    END IF;
    RETURN NULL;
END;
$$;

CREATE TRIGGER calls_updated_wake_dispatchers
    AFTER UPDATE ON calls REFERENCING NEW TABLE AS changed
    FOR EACH STATEMENT EXECUTE FUNCTION notify_dispatchers();
