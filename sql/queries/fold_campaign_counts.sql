-- Folds the oldest count changes of campaigns (appended by the triggers on `calls`) into
-- campaign_counts, in one statement, so a reader (campaign_counts.sql) sees them on one
-- side or the other. Two folds at once never count a change twice: the second waits for the
-- first's deletes and skips the rows it deleted. Returns how many changes were folded.
--   $1 most changes to fold
WITH folded AS (
    DELETE FROM campaign_count_changes
    WHERE id = ANY (ARRAY(SELECT id FROM campaign_count_changes ORDER BY id LIMIT $1))
    RETURNING campaign_id, status, delta
),
summed AS (
    SELECT campaign_id, status, sum(delta) AS delta FROM folded GROUP BY campaign_id, status
),
applied AS (
    INSERT INTO campaign_counts AS k (campaign_id, status, calls)
    SELECT campaign_id, status, delta FROM summed
    ON CONFLICT (campaign_id, status) DO UPDATE SET calls = k.calls + excluded.calls
)
SELECT count(*) FROM folded
