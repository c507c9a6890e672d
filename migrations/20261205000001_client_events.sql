-- Events for clients: the endpoints clients register, the outbox of events, and one
-- delivery of each event to each endpoint subscribed to it.
--
-- The outbox is written by triggers, in the transaction of the change an event reports:
-- whoever changes a call or a campaign (the service, an operator's UPDATE), its event is
-- committed with the change or not at all. The delivery workers of every replica claim due
-- deliveries with SKIP LOCKED under a lease; see sql/queries/claim_deliveries.sql.

CREATE TYPE event_delivery_status AS ENUM ('PENDING', 'DELIVERED', 'FAILED');

CREATE TABLE event_endpoints (
    id              uuid PRIMARY KEY,
    url             text NOT NULL CHECK (length(url) BETWEEN 1 AND 2048),
    -- Event types, or '*' for every type.
    event_types     text[] NOT NULL CHECK (cardinality(event_types) >= 1),
    description     text CHECK (length(description) <= 500),
    enabled         boolean NOT NULL DEFAULT true,
    -- The signing secret is not stored. It is derived, in the service, from one of the keys
    -- of EVENT_SECRET_KEY (which the database never sees) and this salt: a dump of the
    -- database alone cannot sign an event. `key_id` names which key (a digest of it).
    secret_salt     bytea NOT NULL CHECK (length(secret_salt) = 32),
    key_id          text NOT NULL,
    -- After a rotation the previous secret signs too, until `previous_until`.
    previous_salt   bytea CHECK (length(previous_salt) = 32),
    previous_key_id text,
    previous_until  timestamptz,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    seq             bigint GENERATED ALWAYS AS IDENTITY UNIQUE,
    CONSTRAINT event_endpoints_previous_whole
        CHECK ((previous_salt IS NULL) = (previous_key_id IS NULL)
               AND (previous_salt IS NULL) = (previous_until IS NULL))
);

-- The outbox: one row per change reported. `snapshot` is the changed row of `calls` or
-- `campaigns` as the change left it; the body sent is rendered from it, so every try of a
-- delivery sends the same event whatever happened to the call since.
CREATE TABLE client_events (
    id          uuid PRIMARY KEY,
    type        text NOT NULL CHECK (type IN (
        'call.completed', 'call.failed', 'call.expired', 'call.cancelled',
        'call.attempt_failed', 'campaign.completed'
    )),
    call_id     uuid,
    campaign_id uuid,
    occurred_at timestamptz NOT NULL DEFAULT now(),
    snapshot    jsonb NOT NULL
);

CREATE INDEX client_events_by_time ON client_events (occurred_at);

-- Deliveries name their event and endpoint without foreign keys: the check of a foreign key
-- locks the row it points to (FOR KEY SHARE), and with one endpoint taking every event,
-- every transaction that ends a call would share a lock on that one row (MultiXacts, at
-- every commit). Only the triggers make deliveries, from the event they have just written
-- and the endpoints they have just read; deleting an endpoint deletes its deliveries, and a
-- tombstone catches those a transaction running at that moment still makes.
CREATE TABLE event_deliveries (
    id               uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    -- Creation order, for the list route (newest first).
    seq              bigint GENERATED ALWAYS AS IDENTITY,
    event_id         uuid NOT NULL,
    endpoint_id      uuid NOT NULL,
    status           event_delivery_status NOT NULL DEFAULT 'PENDING',
    -- Tries made (claimed) so far.
    attempts         integer NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    -- PENDING: when it is due. While a worker sends it, the end of its lease: a worker
    -- that dies leaves it due again then.
    next_attempt_at  timestamptz,
    -- Set while a worker holds it: until when (the lease).
    leased_until     timestamptz,
    last_status_code integer,
    last_error       text,
    last_attempt_at  timestamptz,
    delivered_at     timestamptz,
    created_at       timestamptz NOT NULL DEFAULT now(),
    UNIQUE (event_id, endpoint_id),
    CONSTRAINT event_deliveries_pending_is_due
        CHECK ((status = 'PENDING') = (next_attempt_at IS NOT NULL)),
    CONSTRAINT event_deliveries_delivered_when
        CHECK ((status = 'DELIVERED') = (delivered_at IS NOT NULL))
);

CREATE TABLE event_endpoint_tombstones (
    id         uuid PRIMARY KEY,
    deleted_at timestamptz NOT NULL DEFAULT now()
);

-- The workers' claim: per endpoint, due first.
CREATE INDEX event_deliveries_due
    ON event_deliveries (endpoint_id, next_attempt_at) WHERE status = 'PENDING';
-- The tries in flight to each endpoint, counted by the claim.
CREATE INDEX event_deliveries_leased
    ON event_deliveries (endpoint_id, leased_until) WHERE leased_until IS NOT NULL;
-- The list route, newest first per endpoint.
CREATE INDEX event_deliveries_by_endpoint ON event_deliveries (endpoint_id, seq);
-- The sweeper's purge of delivered rows.
CREATE INDEX event_deliveries_delivered
    ON event_deliveries (delivered_at) WHERE status = 'DELIVERED';

ALTER TABLE event_deliveries SET (
    autovacuum_vacuum_scale_factor = 0.01,
    autovacuum_vacuum_threshold = 1000,
    fillfactor = 90
);

-- The enabled endpoints subscribed to events of `kind`. Without a SET clause, so that
-- PostgreSQL inlines it into the triggers' statements (planned once per session) instead of
-- parsing and planning it again for every event; the triggers' own search_path applies.
CREATE FUNCTION event_subscribers(kind text) RETURNS SETOF uuid LANGUAGE sql STABLE AS $$
    SELECT id FROM event_endpoints
    WHERE enabled AND (event_types @> ARRAY[kind] OR event_types @> ARRAY['*'])
$$;

-- A call's final transitions, and a failed attempt that will be retried (IN_PROGRESS back to
-- PENDING with the attempt counted; a 429 gives its attempt back and is not one).
CREATE FUNCTION calls_record_events() RETURNS trigger LANGUAGE plpgsql
SET search_path FROM CURRENT AS $$
DECLARE
    made integer;
BEGIN
    -- Most statements move calls between PENDING and IN_PROGRESS only (claims, answers
    -- recorded): nothing to report, found without joining the two transition tables.
    IF NOT EXISTS (
        SELECT 1 FROM changed
        WHERE status IN ('COMPLETED', 'FAILED', 'EXPIRED', 'CANCELLED', 'PENDING')
    ) THEN
        RETURN NULL;
    END IF;
    WITH recorded AS (
        INSERT INTO client_events (id, type, call_id, campaign_id, snapshot)
        SELECT gen_random_uuid(),
               CASE c.status
                   WHEN 'COMPLETED' THEN 'call.completed'
                   WHEN 'FAILED' THEN 'call.failed'
                   WHEN 'EXPIRED' THEN 'call.expired'
                   WHEN 'CANCELLED' THEN 'call.cancelled'
                   ELSE 'call.attempt_failed'
               END,
               c.id, c.campaign_id, to_jsonb(c)
        FROM changed c
        JOIN previous p ON p.id = c.id
        WHERE c.status IS DISTINCT FROM p.status
          AND (c.status IN ('COMPLETED', 'FAILED', 'EXPIRED', 'CANCELLED')
               OR (p.status = 'IN_PROGRESS' AND c.status = 'PENDING' AND c.attempts >= p.attempts))
        RETURNING id, type
    )
    INSERT INTO event_deliveries (event_id, endpoint_id, next_attempt_at)
    SELECT r.id, s.id, now() FROM recorded r CROSS JOIN LATERAL event_subscribers(r.type) AS s (id);
    GET DIAGNOSTICS made = ROW_COUNT;
    -- The statement that changed the calls notifies the dispatchers already, so this
    -- NOTIFY adds no commit-time lock of its own.
    IF made > 0 THEN
        PERFORM pg_notify('call_orchestrator_events', '');
    END IF;
    RETURN NULL;
END;
$$;

CREATE TRIGGER calls_record_events
    AFTER UPDATE ON calls REFERENCING OLD TABLE AS previous NEW TABLE AS changed
    FOR EACH STATEMENT EXECUTE FUNCTION calls_record_events();

-- A campaign becoming COMPLETED (again, after calls were added, is another event).
CREATE FUNCTION campaigns_record_events() RETURNS trigger LANGUAGE plpgsql
SET search_path FROM CURRENT AS $$
DECLARE
    made integer;
BEGIN
    WITH recorded AS (
        INSERT INTO client_events (id, type, campaign_id, snapshot)
        SELECT gen_random_uuid(), 'campaign.completed', k.id, to_jsonb(k)
        FROM changed k
        JOIN previous p ON p.id = k.id
        WHERE k.status = 'COMPLETED' AND p.status <> 'COMPLETED'
        RETURNING id, type
    )
    INSERT INTO event_deliveries (event_id, endpoint_id, next_attempt_at)
    SELECT r.id, s.id, now() FROM recorded r CROSS JOIN LATERAL event_subscribers(r.type) AS s (id);
    GET DIAGNOSTICS made = ROW_COUNT;
    IF made > 0 THEN
        PERFORM pg_notify('call_orchestrator_events', '');
    END IF;
    RETURN NULL;
END;
$$;

CREATE TRIGGER campaigns_record_events
    AFTER UPDATE ON campaigns REFERENCING OLD TABLE AS previous NEW TABLE AS changed
    FOR EACH STATEMENT EXECUTE FUNCTION campaigns_record_events();
