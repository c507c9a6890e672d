-- Campaigns: calls grouped under one purpose and its rules (a cap of its own, a priority, a
-- narrower calling window, a start and an end, its own retries), paused, resumed and
-- cancelled as one; with their calls counted by status by the database itself.
--
-- Nothing here reads a large table: `calls` gains a column without a default and a foreign
-- key NOT VALID (validated by a later migration, which lets writes through), and the index
-- that lists a campaign's calls is built by a migration of its own.

CREATE TYPE campaign_status AS ENUM ('ACTIVE', 'PAUSED', 'CANCELLED', 'COMPLETED');

CREATE TABLE campaigns (
    id                   uuid PRIMARY KEY,
    -- Creation order: lists go newest first by it.
    seq                  bigint GENERATED ALWAYS AS IDENTITY UNIQUE,
    name                 text NOT NULL CHECK (char_length(name) BETWEEN 1 AND 200),
    -- The script of its calls that name none.
    script_id            text CHECK (script_id ~ '^[A-Za-z0-9_.:-]{1,128}$'),
    -- Its own cap on calls IN_PROGRESS (NULL: only the global one).
    max_concurrent_calls integer CHECK (max_concurrent_calls BETWEEN 1 AND 100000),
    -- 0 to 9, higher first; loose calls (no campaign) count as 5.
    priority             smallint NOT NULL DEFAULT 5 CHECK (priority BETWEEN 0 AND 9),
    -- Its calling window, in the callee's local time, narrowing CALLING_WINDOW and
    -- CALLING_DAYS (both must be open): 'HH:MM-HH:MM' and 'mon,tue,…' (NULL: the global).
    window_hours         text CHECK (window_hours ~ '^[0-9]{2}:[0-9]{2}-[0-9]{2}:[0-9]{2}$'),
    window_days          text CHECK (window_days ~ '^[a-z]{3}(,[a-z]{3}){0,6}$'),
    -- None of its calls is dialed before start_at; at end_at its PENDING calls expire.
    start_at             timestamptz,
    end_at               timestamptz,
    -- Its retry policy as the API shows it: {"maxAttempts", "outcomes", "delays"}.
    retry                jsonb CHECK (jsonb_typeof(retry) = 'object'),
    metadata             jsonb NOT NULL DEFAULT '{}' CHECK (jsonb_typeof(metadata) = 'object'),
    status               campaign_status NOT NULL DEFAULT 'ACTIVE',
    created_at           timestamptz NOT NULL DEFAULT now(),
    updated_at           timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT campaigns_end_after_start CHECK (end_at > start_at)
);
CREATE INDEX campaigns_newest_first ON campaigns (seq DESC);
CREATE INDEX campaigns_by_status ON campaigns (status, seq DESC);
-- The campaigns the claim serves: the active ones, however many have ended.
CREATE INDEX campaigns_active ON campaigns (id) INCLUDE (priority, max_concurrent_calls)
    WHERE status = 'ACTIVE';

ALTER TABLE calls ADD COLUMN campaign_id uuid;
ALTER TABLE calls ADD CONSTRAINT calls_campaign_id_fkey
    FOREIGN KEY (campaign_id) REFERENCES campaigns (id) NOT VALID;

-- The claim serves the queue by lane: one lane per campaign, and one (the nil UUID) for the
-- calls of no campaign. Each lane is walked in due order, then oldest first; a paused or
-- cancelled campaign's lane is never read at all, however many calls it holds.
ALTER TABLE call_queue
    ADD COLUMN lane uuid NOT NULL DEFAULT '00000000-0000-0000-0000-000000000000';
CREATE INDEX call_queue_pending_by_lane
    ON call_queue (lane, due_at, seq) INCLUDE (call_id, to_number) WHERE status = 'PENDING';
-- call_queue_pending_in_due_order stays for now: replicas of the previous version, still
-- running during a rolling upgrade, claim through it. A later migration drops it.

-- Which lane the claim served last, so that free slots go round-robin between the lanes of
-- one priority. Written only by claims, under the claim lock.
CREATE TABLE dispatch_turns (
    lane uuid PRIMARY KEY,
    turn bigint NOT NULL
) WITH (autovacuum_vacuum_scale_factor = 0, autovacuum_vacuum_threshold = 200);
CREATE SEQUENCE dispatch_turn;

-- A campaign's calls by status, kept by the triggers on `calls`, so the counts stay right
-- whoever writes (the service, an operator's UPDATE, a bulk load) and cost a few rows to
-- read. Every statement that changes calls of a campaign appends its net changes to
-- campaign_count_changes (an insert: no two writers ever wait on one counter row); the
-- sweeper folds them into campaign_counts (db::fold_campaign_counts). A count is the sum of
-- both, read in one statement.
CREATE TABLE campaign_counts (
    campaign_id uuid NOT NULL,
    status      call_status NOT NULL,
    calls       bigint NOT NULL,
    PRIMARY KEY (campaign_id, status)
);
CREATE TABLE campaign_count_changes (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    campaign_id uuid NOT NULL,
    status      call_status NOT NULL,
    delta       bigint NOT NULL
) WITH (autovacuum_vacuum_scale_factor = 0, autovacuum_vacuum_threshold = 1000);
CREATE INDEX campaign_count_changes_by_campaign ON campaign_count_changes (campaign_id);

-- Whether any call of campaign `campaign` is open (PENDING or IN_PROGRESS): two probes of
-- the queue, by lane. Read by the triggers below, by resume and by the sweeper's mending.
CREATE FUNCTION campaign_has_open_calls(campaign uuid) RETURNS boolean LANGUAGE sql STABLE
SET search_path FROM CURRENT AS $$
    SELECT EXISTS (SELECT 1 FROM call_queue q WHERE q.lane = campaign AND q.status = 'PENDING')
        OR EXISTS (SELECT 1 FROM call_queue q WHERE q.lane = campaign AND q.status = 'IN_PROGRESS')
$$;

-- The triggers of the call_queue migration, now also keeping the lane, the counts and the
-- campaign's status: COMPLETED when a statement leaves none of its calls open, ACTIVE
-- again when one is added. Completing never waits for a lock (the claim's own expiries and
-- cancels come through here, under the claim lock): a campaign row someone holds (a create
-- adding calls to it, a PATCH) is left to the sweeper, as is a campaign whose last two
-- calls end at once in two transactions (each sees the other's still open); the sweeper
-- completes them on its next pass (db::settle_campaigns). The check is made again after
-- the row is locked, in a statement of its own, so with a snapshot that sees every
-- transaction that added calls and committed before.
CREATE OR REPLACE FUNCTION call_queue_added() RETURNS trigger LANGUAGE plpgsql
SET search_path FROM CURRENT AS $$
BEGIN
    INSERT INTO call_queue (seq, call_id, to_number, status, due_at, lane)
    SELECT seq, id, to_number, status, next_attempt_at,
           coalesce(campaign_id, '00000000-0000-0000-0000-000000000000')
    FROM added
    WHERE status IN ('PENDING', 'IN_PROGRESS');
    IF EXISTS (SELECT 1 FROM added WHERE campaign_id IS NOT NULL) THEN
        INSERT INTO campaign_count_changes (campaign_id, status, delta)
        SELECT campaign_id, status, count(*) FROM added
        WHERE campaign_id IS NOT NULL GROUP BY campaign_id, status;
        -- Without waiting: a create reopens its campaigns itself before it inserts
        -- (db::campaigns::hold_open); one held here by another is left to the sweeper.
        UPDATE campaigns SET status = 'ACTIVE', updated_at = now()
        WHERE id = ANY (ARRAY(
            SELECT id FROM campaigns
            WHERE id = ANY (ARRAY(
                SELECT DISTINCT campaign_id FROM added
                WHERE campaign_id IS NOT NULL AND status IN ('PENDING', 'IN_PROGRESS')
            ))
              AND status = 'COMPLETED'
            ORDER BY id
            FOR NO KEY UPDATE SKIP LOCKED
        ))
          AND status = 'COMPLETED';
    END IF;
    RETURN NULL;
END;
$$;

CREATE OR REPLACE FUNCTION call_queue_removed() RETURNS trigger LANGUAGE plpgsql
SET search_path FROM CURRENT AS $$
BEGIN
    DELETE FROM call_queue WHERE call_id = ANY (ARRAY(SELECT id FROM removed));
    IF EXISTS (SELECT 1 FROM removed WHERE campaign_id IS NOT NULL) THEN
        INSERT INTO campaign_count_changes (campaign_id, status, delta)
        SELECT campaign_id, status, -count(*) FROM removed
        WHERE campaign_id IS NOT NULL GROUP BY campaign_id, status;
    END IF;
    RETURN NULL;
END;
$$;

CREATE OR REPLACE FUNCTION calls_changed() RETURNS trigger LANGUAGE plpgsql
SET search_path FROM CURRENT AS $$
DECLARE
    done uuid[];
BEGIN
    DELETE FROM call_queue
    WHERE call_id = ANY (ARRAY(
        SELECT id FROM changed WHERE status NOT IN ('PENDING', 'IN_PROGRESS')
    ));
    INSERT INTO call_queue AS q (call_id, seq, to_number, status, due_at, lane)
    SELECT c.id, c.seq, c.to_number, c.status, c.next_attempt_at,
           coalesce(c.campaign_id, '00000000-0000-0000-0000-000000000000')
    FROM changed c
    JOIN previous p ON p.id = c.id
    WHERE c.status IN ('PENDING', 'IN_PROGRESS')
      AND (c.status, c.to_number, c.next_attempt_at, c.campaign_id)
          IS DISTINCT FROM (p.status, p.to_number, p.next_attempt_at, p.campaign_id)
    ON CONFLICT (call_id) DO UPDATE
    SET status = excluded.status, to_number = excluded.to_number, due_at = excluded.due_at,
        lane = excluded.lane;
    IF EXISTS (SELECT 1 FROM changed WHERE campaign_id IS NOT NULL)
       OR EXISTS (SELECT 1 FROM previous WHERE campaign_id IS NOT NULL) THEN
        INSERT INTO campaign_count_changes (campaign_id, status, delta)
        SELECT campaign_id, status, sum(delta)
        FROM (
            SELECT p.campaign_id, p.status, -1 AS delta
            FROM previous p JOIN changed c ON c.id = p.id
            WHERE p.campaign_id IS NOT NULL
              AND (p.status, p.campaign_id) IS DISTINCT FROM (c.status, c.campaign_id)
            UNION ALL
            SELECT c.campaign_id, c.status, 1
            FROM changed c JOIN previous p ON p.id = c.id
            WHERE c.campaign_id IS NOT NULL
              AND (p.status, p.campaign_id) IS DISTINCT FROM (c.status, c.campaign_id)
        ) moved
        GROUP BY campaign_id, status
        HAVING sum(delta) <> 0;
        done := ARRAY(
            SELECT k.id FROM campaigns k
            WHERE k.id = ANY (ARRAY(
                SELECT DISTINCT campaign_id FROM changed
                WHERE campaign_id IS NOT NULL AND status NOT IN ('PENDING', 'IN_PROGRESS')
            ))
              AND k.status = 'ACTIVE'
              AND NOT campaign_has_open_calls(k.id)
        );
        IF cardinality(done) > 0 THEN
            done := ARRAY(
                SELECT id FROM campaigns WHERE id = ANY (done)
                ORDER BY id FOR NO KEY UPDATE SKIP LOCKED
            );
            UPDATE campaigns k SET status = 'COMPLETED', updated_at = now()
            WHERE k.id = ANY (done)
              AND k.status = 'ACTIVE'
              AND NOT campaign_has_open_calls(k.id);
        END IF;
    END IF;
    IF EXISTS (SELECT 1 FROM changed WHERE status <> 'IN_PROGRESS') THEN
        PERFORM pg_notify('call_orchestrator_wakeup', '');
    END IF;
    RETURN NULL;
END;
$$;

CREATE OR REPLACE FUNCTION call_queue_emptied() RETURNS trigger LANGUAGE plpgsql
SET search_path FROM CURRENT AS $$
BEGIN
    TRUNCATE call_queue;
    TRUNCATE campaign_counts;
    TRUNCATE campaign_count_changes;
    RETURN NULL;
END;
$$;

-- CANCELLED and EXPIRED entries now also say when a campaign did it (in `detail`); no new
-- kinds. The operator's view of what waits shows the campaign and whether it holds its
-- calls back.
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
       ) AS suppressed,
       c.campaign_id,
       k.status AS campaign_status
FROM calls c
LEFT JOIN campaigns k ON k.id = c.campaign_id
WHERE c.status = 'PENDING'
ORDER BY c.seq;
