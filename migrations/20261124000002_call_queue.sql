-- The dispatcher's working set in a small table of its own: one row per open call (PENDING
-- or IN_PROGRESS), kept in step with `calls` by the triggers below, so every writer of
-- `calls` (the service, an operator's UPDATE, a script) keeps it right without knowing.
-- What skips triggers (session_replication_role = replica, DISABLE TRIGGER) or writes
-- call_queue by hand breaks that: sql/ops/queue_drift.sql shows and mends any difference.
--
-- Why: each call that leaves PENDING or IN_PROGRESS leaves a dead entry in the indexes
-- the claim walks, and the claim walks them from the oldest end, so after a burst of
-- traffic it steps over every dead entry until vacuum removes them. On `calls`, which
-- keeps every call ever made, that vacuum is a scan of a large table and all its indexes,
-- and autovacuum runs it once a minute at best. This table holds only the open calls, so
-- vacuuming it costs milliseconds, and the workers vacuum it whenever dead rows pile up
-- (db::queue_upkeep). `calls` stays the source of truth: the claim locks and re-checks the
-- call row itself.

-- No write to calls may slip between the copy below and the triggers that take over from it
-- (replicas of the previous version keep running during a rolling deploy): hold writers
-- off for the length of this migration, which is one pass over the open calls.
LOCK TABLE calls IN SHARE ROW EXCLUSIVE MODE;

CREATE TABLE call_queue (
    call_id   uuid PRIMARY KEY,
    -- The call's `seq`: claim order, oldest first.
    seq       bigint NOT NULL,
    to_number text NOT NULL,
    status    call_status NOT NULL CHECK (status IN ('PENDING', 'IN_PROGRESS')),
    -- When a PENDING call falls due (its `next_attempt_at`).
    due_at    timestamptz,
    CONSTRAINT call_queue_pending_is_due_sometime CHECK ((status = 'PENDING') = (due_at IS NOT NULL))
) WITH (
    -- The workers vacuum it as dead rows pile up; autovacuum is the safety net.
    autovacuum_vacuum_scale_factor = 0,
    autovacuum_vacuum_threshold = 1000,
    autovacuum_vacuum_insert_scale_factor = 0,
    autovacuum_vacuum_insert_threshold = 10000,
    autovacuum_analyze_scale_factor = 0.05,
    -- A vacuum that finds the table's tail empty would otherwise cut it off under an
    -- exclusive lock, stalling every write to calls (their triggers write here) meanwhile.
    vacuum_truncate = off
);

-- The claim walks this, oldest first. The only index in `seq` order, so the planner never
-- walks the in-progress rows (and their dead versions) to find the pending ones.
CREATE INDEX call_queue_pending_oldest_first
    ON call_queue (seq) INCLUDE (call_id, to_number, due_at) WHERE status = 'PENDING';

-- When the next retry falls due, for the dispatcher's timer.
CREATE INDEX call_queue_pending_by_due ON call_queue (due_at) WHERE status = 'PENDING';

-- The numbers in progress: the claim's count and its busy-number check. The same rule as
-- calls_one_in_progress_per_number, which stays the guarantee on `calls`.
CREATE UNIQUE INDEX call_queue_one_in_progress_per_number
    ON call_queue (to_number) WHERE status = 'IN_PROGRESS';

INSERT INTO call_queue (seq, call_id, to_number, status, due_at)
SELECT seq, id, to_number, status, next_attempt_at
FROM calls
WHERE status IN ('PENDING', 'IN_PROGRESS');

-- The claim and the timer read call_queue now; these only slowed every insert down.
DROP INDEX calls_pending_oldest_first;
DROP INDEX calls_pending_by_due;

-- Each function keeps the search_path it was created with, so it finds call_queue whatever
-- the writer's own search_path is. They run with the writer's rights: whoever may write
-- calls needs the same rights on call_queue (the service owns both: it runs the migrations).
CREATE FUNCTION call_queue_added() RETURNS trigger LANGUAGE plpgsql
SET search_path FROM CURRENT AS $$
BEGIN
    INSERT INTO call_queue (seq, call_id, to_number, status, due_at)
    SELECT seq, id, to_number, status, next_attempt_at
    FROM added
    WHERE status IN ('PENDING', 'IN_PROGRESS');
    RETURN NULL;
END;
$$;

CREATE TRIGGER calls_added_to_queue
    AFTER INSERT ON calls REFERENCING NEW TABLE AS added
    FOR EACH STATEMENT EXECUTE FUNCTION call_queue_added();

CREATE FUNCTION call_queue_removed() RETURNS trigger LANGUAGE plpgsql
SET search_path FROM CURRENT AS $$
BEGIN
    DELETE FROM call_queue WHERE call_id = ANY (ARRAY(SELECT id FROM removed));
    RETURN NULL;
END;
$$;

CREATE TRIGGER calls_removed_from_queue
    AFTER DELETE ON calls REFERENCING OLD TABLE AS removed
    FOR EACH STATEMENT EXECUTE FUNCTION call_queue_removed();

-- Every UPDATE of calls: keep the queue in step, then wake the dispatchers when a call
-- became claimable again or a slot freed (as notify_dispatchers did: one notification per
-- statement, sent at commit; claims, which only make rows IN_PROGRESS, notify nobody, or
-- replicas would wake each other forever; new calls are announced by the API after its
-- commit, see db::Wakeup). The DELETE goes through an array so that it is always a look-up
-- by key, whatever the planner guesses of the transition table's size.
CREATE FUNCTION calls_changed() RETURNS trigger LANGUAGE plpgsql
SET search_path FROM CURRENT AS $$
BEGIN
    DELETE FROM call_queue
    WHERE call_id = ANY (ARRAY(
        SELECT id FROM changed WHERE status NOT IN ('PENDING', 'IN_PROGRESS')
    ));
    INSERT INTO call_queue AS q (call_id, seq, to_number, status, due_at)
    SELECT c.id, c.seq, c.to_number, c.status, c.next_attempt_at
    FROM changed c
    JOIN previous p ON p.id = c.id
    WHERE c.status IN ('PENDING', 'IN_PROGRESS')
      AND (c.status, c.to_number, c.next_attempt_at)
          IS DISTINCT FROM (p.status, p.to_number, p.next_attempt_at)
    ON CONFLICT (call_id) DO UPDATE
    SET status = excluded.status, to_number = excluded.to_number, due_at = excluded.due_at;
    IF EXISTS (SELECT 1 FROM changed WHERE status <> 'IN_PROGRESS') THEN
        PERFORM pg_notify('call_orchestrator_wakeup', '');
    END IF;
    RETURN NULL;
END;
$$;

DROP TRIGGER calls_updated_wake_dispatchers ON calls;
DROP FUNCTION notify_dispatchers();

CREATE TRIGGER calls_changed
    AFTER UPDATE ON calls REFERENCING OLD TABLE AS previous NEW TABLE AS changed
    FOR EACH STATEMENT EXECUTE FUNCTION calls_changed();

CREATE FUNCTION call_queue_emptied() RETURNS trigger LANGUAGE plpgsql
SET search_path FROM CURRENT AS $$
BEGIN
    TRUNCATE call_queue;
    RETURN NULL;
END;
$$;

CREATE TRIGGER calls_truncated_empty_queue
    AFTER TRUNCATE ON calls
    FOR EACH STATEMENT EXECUTE FUNCTION call_queue_emptied();
