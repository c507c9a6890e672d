-- Inserts calls in the order given ($1..$4 are parallel arrays, one element per call),
-- records each one's CREATED event, and returns the new rows oldest first.
-- Used by the single create (arrays of one) and by the batch route, in one statement.
WITH input AS (
    SELECT *
    FROM UNNEST($1::uuid[], $2::text[], $3::text[], $4::jsonb[])
        WITH ORDINALITY AS t (id, to_number, script_id, metadata, ord)
),
inserted AS (
    INSERT INTO calls (id, to_number, script_id, metadata, next_attempt_at)
    SELECT id, to_number, script_id, metadata, now()
    FROM input
    ORDER BY ord
    RETURNING *
),
events AS (
    INSERT INTO call_events (call_id, kind)
    SELECT id, 'CREATED' FROM inserted
)
SELECT * FROM inserted ORDER BY seq
