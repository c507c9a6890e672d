-- Lawful calling: a call's own start and deadline and time zone, the do-not-call list, and
-- what the claim needs to enforce the calling window and the daily limit per number.

-- Nothing here reads a large table: the columns are added without a default, their checks
-- NOT VALID (every new write is checked; every existing row is NULL), and the indexes on
-- `calls` and `call_attempts` are built by the next migrations, since this one holds its
-- tables locked against reads and writes until it commits.
ALTER TABLE calls
    -- Not dialed before this instant.
    ADD COLUMN not_before timestamptz,
    -- Still PENDING at this instant: EXPIRED, never dialed.
    ADD COLUMN not_after timestamptz,
    -- The callee's IANA time zone, when the client named one (else the number's prefix
    -- tells, else DEFAULT_TIMEZONE).
    ADD COLUMN timezone text,
    -- Why a PENDING call waits beyond its due time, when the schedule moved it: its
    -- notBefore, its calling window, its number's daily limit, or a deadline that comes
    -- before its window opens. NULL for a call due as created or as its backoff says.
    ADD COLUMN waiting_for text;
ALTER TABLE calls ADD CONSTRAINT calls_timezone_is_a_name
    CHECK (timezone ~ '^[A-Za-z0-9_+/-]{1,64}$') NOT VALID;
ALTER TABLE calls ADD CONSTRAINT calls_deadline_after_start
    CHECK (not_after > not_before) NOT VALID;
ALTER TABLE calls ADD CONSTRAINT calls_waiting_for_is_known
    CHECK (waiting_for IN ('NOT_BEFORE', 'CALLING_WINDOW', 'DAILY_LIMIT', 'DEADLINE')) NOT VALID;

-- The claim walks the queue in the order calls fell due, then oldest first (River's and
-- Oban's order: scheduled_at, id). A call waiting for its window, its notBefore or its
-- backoff is further on in this index, never in the way: however many wait, the claim reads
-- only due entries. In `seq` order it would step over every waiting call older than the
-- first due one, at every claim.
CREATE INDEX call_queue_pending_in_due_order
    ON call_queue (due_at, seq) INCLUDE (call_id, to_number) WHERE status = 'PENDING';
DROP INDEX call_queue_pending_oldest_first;
DROP INDEX call_queue_pending_by_due;

-- The number of every attempt, for MAX_ATTEMPTS_PER_NUMBER_PER_DAY: the claim counts a
-- number's attempts of the last 24 hours with one range read of this index. Attempts made
-- before this migration have none, and are not counted (for their last day at most).
-- (Its index is built by a migration of its own, which lets reads through meanwhile.)
ALTER TABLE call_attempts ADD COLUMN to_number text;

-- The do-not-call list. A number here is never dialed while its suppression is in force
-- (no expires_at, or one still ahead): creating a call to it is refused, and a call queued
-- before it was suppressed is cancelled at its turn.
CREATE TABLE suppressions (
    number     text PRIMARY KEY CHECK (number ~ '^\+[1-9][0-9]{6,14}$'),
    reason     text NOT NULL CHECK (char_length(reason) BETWEEN 1 AND 500),
    expires_at timestamptz,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX suppressions_newest_first ON suppressions (created_at DESC, number);

-- WAITING: the claim or a create moved a call to later (its window, its notBefore, the
-- daily limit), with why and until when.
ALTER TABLE call_events DROP CONSTRAINT call_events_kind_check;
-- NOT VALID here (the table is locked until this migration commits); validated by a later
-- migration, which reads the table without holding its writers off.
ALTER TABLE call_events ADD CONSTRAINT call_events_kind_check CHECK (kind IN (
    'CREATED', 'UPDATED', 'CANCELLED', 'DIALED', 'ACCEPTED', 'DIAL_FAILED', 'DIAL_UNKNOWN',
    'RATE_LIMITED', 'WEBHOOK_RECEIVED', 'RECONCILED', 'RETRY_SCHEDULED', 'WAITING',
    'COMPLETED', 'FAILED', 'EXPIRED', 'RESCUED'
)) NOT VALID;

-- The waiting calls show why they wait (columns added at the end, as CREATE OR REPLACE
-- VIEW requires).
CREATE OR REPLACE VIEW calls_waiting AS
SELECT c.id,
       c.seq,
       c.to_number,
       c.attempts,
       c.next_attempt_at,
       c.next_attempt_at <= now() AS due,
       EXISTS (
           SELECT 1 FROM calls busy
           WHERE busy.status = 'IN_PROGRESS' AND busy.to_number = c.to_number
       ) AS number_busy,
       c.last_error,
       c.waiting_for,
       c.not_before,
       c.not_after,
       c.timezone,
       EXISTS (
           SELECT 1 FROM suppressions s
           WHERE s.number = c.to_number AND (s.expires_at IS NULL OR s.expires_at > now())
       ) AS suppressed
FROM calls c
WHERE c.status = 'PENDING'
ORDER BY c.seq;
