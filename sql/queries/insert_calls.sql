-- Inserts calls in the order given ($1..$4 are parallel arrays, one element per call) and
-- returns the new rows oldest first. Used by the single create (arrays of one) and by the
-- batch route, in one statement. The timeline's CREATED entry is the row itself
-- (created_at), so nothing else is written.
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
)
SELECT * FROM inserted ORDER BY seq
