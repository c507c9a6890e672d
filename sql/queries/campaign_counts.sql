-- The calls of each campaign by status: its folded counts plus the changes the triggers
-- appended since the last fold (see the campaigns migration), in one statement, so from one
-- snapshot: a fold moves changes into the counts in one statement too, and a reader sees
-- either side of it, never both or neither.
--   $1 campaigns
SELECT campaign_id, status, sum(calls)::bigint AS calls
FROM (
    SELECT campaign_id, status, calls FROM campaign_counts WHERE campaign_id = ANY ($1)
    UNION ALL
    SELECT campaign_id, status, delta FROM campaign_count_changes WHERE campaign_id = ANY ($1)
) counted
GROUP BY campaign_id, status
