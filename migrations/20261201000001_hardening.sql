-- Hardening: what the service needs so that nobody but the provider can move a call, and
-- no client can read another's.

-- Secrets the replicas share without any configuration, made once by the first migration
-- run. `webhook_token` keys the per-attempt token carried by the webhook URLs handed to the
-- provider (see src/domain/webhook_token.rs): 32 bytes from two version-4 UUIDs, 244 of
-- them random, from PostgreSQL's strong random source.
CREATE TABLE service_secrets (
    name       text PRIMARY KEY,
    value      bytea NOT NULL CHECK (length(value) >= 32),
    created_at timestamptz NOT NULL DEFAULT now()
);

INSERT INTO service_secrets (name, value)
VALUES ('webhook_token',
        decode(replace(gen_random_uuid()::text || gen_random_uuid()::text, '-', ''), 'hex'));

-- When a final webhook was applied to the attempt: a repeat of it is then a duplicate.
-- An attempt the dial path settled (a 409 to a resend, say) has none, so the provider's
-- real outcome, when it comes, is still recorded.
ALTER TABLE call_attempts ADD COLUMN final_webhook_at timestamptz;

-- DIAL_UNKNOWN: the provider's answer to a dial was lost (timeout, cut connection, a 5xx
-- to a resend); the attempt stays open and is sent again with the same Idempotency-Key.
ALTER TABLE call_events DROP CONSTRAINT call_events_kind_check;
ALTER TABLE call_events ADD CONSTRAINT call_events_kind_check CHECK (kind IN (
    'CREATED', 'UPDATED', 'CANCELLED', 'DIALED', 'ACCEPTED', 'DIAL_FAILED', 'DIAL_UNKNOWN',
    'RATE_LIMITED', 'WEBHOOK_RECEIVED', 'RETRY_SCHEDULED', 'COMPLETED', 'FAILED',
    'EXPIRED', 'RESCUED'
));

-- Idempotency-Keys belong to the client that sent them: `scope` is the SHA-256 of its API
-- key (never the key), empty when the service runs without API_KEYS. A batch keeps all
-- of its calls, in order, in `call_ids`; `call_id` (its first) ties the key to them.
ALTER TABLE idempotency_keys ADD COLUMN scope bytea NOT NULL DEFAULT '\x';
ALTER TABLE idempotency_keys ADD COLUMN call_ids uuid[];
ALTER TABLE idempotency_keys DROP CONSTRAINT idempotency_keys_pkey;
ALTER TABLE idempotency_keys ADD PRIMARY KEY (scope, key);

-- `webhook-id`s of signed webhooks seen within the signature's tolerance: an exact replay
-- of one is answered as a duplicate and changes nothing. Forgotten by the sweeper.
CREATE TABLE webhook_receipts (
    webhook_id  text PRIMARY KEY CHECK (length(webhook_id) BETWEEN 1 AND 255),
    received_at timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX webhook_receipts_by_age ON webhook_receipts (received_at);
