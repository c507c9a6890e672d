-- The calls in each status: the folded counts plus the changes the triggers appended since
-- the last fold (see the call_counts migration), in one statement, so from one snapshot: a
-- fold moves changes into the counts in one statement too, and a reader sees either side of
-- it, never both or neither. Statuses with no calls are absent or zero.
SELECT status, sum(calls)::bigint AS calls
FROM (
    SELECT status, calls FROM call_counts
    UNION ALL
    SELECT status, delta FROM call_count_changes
) counted
GROUP BY status
