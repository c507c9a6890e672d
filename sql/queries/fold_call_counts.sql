-- Folds the oldest changes of the calls' counts (appended by the triggers on `calls`) into
-- call_counts, in one statement, so a reader (call_counts.sql) sees them on one side or the
-- other. Two folds at once never count a change twice: the second waits for the first's
-- deletes and skips the rows it deleted. Returns how many changes were folded.
--   $1 most changes to fold
WITH folded AS (
    DELETE FROM call_count_changes
    WHERE id = ANY (ARRAY(SELECT id FROM call_count_changes ORDER BY id LIMIT $1))
    RETURNING status, delta
),
summed AS (
    SELECT status, sum(delta) AS delta FROM folded GROUP BY status
),
applied AS (
    INSERT INTO call_counts AS k (status, calls)
    SELECT status, delta FROM summed
    ON CONFLICT (status) DO UPDATE SET calls = k.calls + excluded.calls
)
SELECT count(*) FROM folded
