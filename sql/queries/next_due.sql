-- When the dispatcher should look again, if no wake-up comes first: the earliest due time
-- of a PENDING call in a lane the claim serves (the calls of no campaign, each active
-- campaign that has started), or the start of an active campaign that has not. A paused
-- campaign's calls are not counted: its resume wakes the dispatchers.
SELECT min(at) FROM (
    SELECT (SELECT min(q.due_at) FROM call_queue q
            WHERE q.lane = '00000000-0000-0000-0000-000000000000' AND q.status = 'PENDING') AS at
    UNION ALL
    SELECT CASE
               WHEN k.start_at > now() THEN k.start_at
               ELSE (SELECT min(q.due_at) FROM call_queue q
                     WHERE q.lane = k.id AND q.status = 'PENDING')
           END
    FROM campaigns k
    WHERE k.status = 'ACTIVE'
) lanes
