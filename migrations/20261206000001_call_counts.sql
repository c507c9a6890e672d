-- Calls by status, kept by the database itself, so `GET /api/v1/metrics`, `/metrics` and the
-- totals of `GET /api/v1/calls` cost a few rows to read however many calls are stored, and
-- stay right whoever writes `calls` (the service, an operator's UPDATE, a bulk load, a
-- DELETE). The same design as the campaigns' counts: every statement that changes statuses
-- appends its net changes to call_count_changes (an insert: no two writers ever wait on one
-- counter row), the workers fold them into call_counts every second (db::fold_counts), and a
-- count is the sum of both, read in one statement (sql/queries/call_counts.sql).
CREATE TABLE call_counts (
    status call_status PRIMARY KEY,
    calls  bigint NOT NULL
);
CREATE TABLE call_count_changes (
    id     bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    status call_status NOT NULL,
    delta  bigint NOT NULL
) WITH (autovacuum_vacuum_scale_factor = 0, autovacuum_vacuum_threshold = 1000);

CREATE FUNCTION call_counts_added() RETURNS trigger LANGUAGE plpgsql
SET search_path FROM CURRENT AS $$
BEGIN
    INSERT INTO call_count_changes (status, delta)
    SELECT status, count(*) FROM added GROUP BY status;
    RETURN NULL;
END;
$$;

CREATE FUNCTION call_counts_removed() RETURNS trigger LANGUAGE plpgsql
SET search_path FROM CURRENT AS $$
BEGIN
    INSERT INTO call_count_changes (status, delta)
    SELECT status, -count(*) FROM removed GROUP BY status;
    RETURN NULL;
END;
$$;

-- An UPDATE's old and new rows are the same calls, so the net change of each status is its
-- count among the new rows less its count among the old ones: no join. A statement that
-- moves no call between statuses (a payload PATCH, an answer recorded) appends nothing.
CREATE FUNCTION call_counts_changed() RETURNS trigger LANGUAGE plpgsql
SET search_path FROM CURRENT AS $$
BEGIN
    INSERT INTO call_count_changes (status, delta)
    SELECT status, sum(delta)
    FROM (
        SELECT status, -1 AS delta FROM previous
        UNION ALL
        SELECT status, 1 FROM changed
    ) moved
    GROUP BY status
    HAVING sum(delta) <> 0;
    RETURN NULL;
END;
$$;

CREATE FUNCTION call_counts_emptied() RETURNS trigger LANGUAGE plpgsql
SET search_path FROM CURRENT AS $$
BEGIN
    TRUNCATE call_counts;
    TRUNCATE call_count_changes;
    RETURN NULL;
END;
$$;

-- No write may land between the count below and the triggers taking over (a replica of the
-- previous version still running): SHARE mode lets reads go on and holds writes for the
-- length of one scan of `calls`, about a second per million calls.
LOCK TABLE calls IN SHARE MODE;

CREATE TRIGGER calls_counted_added
    AFTER INSERT ON calls REFERENCING NEW TABLE AS added
    FOR EACH STATEMENT EXECUTE FUNCTION call_counts_added();
CREATE TRIGGER calls_counted_removed
    AFTER DELETE ON calls REFERENCING OLD TABLE AS removed
    FOR EACH STATEMENT EXECUTE FUNCTION call_counts_removed();
CREATE TRIGGER calls_counted_changed
    AFTER UPDATE ON calls REFERENCING OLD TABLE AS previous NEW TABLE AS changed
    FOR EACH STATEMENT EXECUTE FUNCTION call_counts_changed();
CREATE TRIGGER calls_counted_emptied
    AFTER TRUNCATE ON calls
    FOR EACH STATEMENT EXECUTE FUNCTION call_counts_emptied();

INSERT INTO call_counts (status, calls) SELECT status, count(*) FROM calls GROUP BY status;

-- Retention (RETENTION_PERIOD) deletes old final calls, and each delete cascades to the
-- call's attempts and Idempotency-Keys: found by these, not by a scan of either table.
CREATE INDEX IF NOT EXISTS call_attempts_by_call ON call_attempts (call_id);
CREATE INDEX IF NOT EXISTS idempotency_keys_by_call ON idempotency_keys (call_id);
