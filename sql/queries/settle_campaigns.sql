-- Mends campaign statuses the triggers on `calls` could not see right: ACTIVE with calls
-- and none open is COMPLETED (its last two calls ended at once, in two transactions that
-- each saw the other's open); COMPLETED with calls open is ACTIVE (calls added while it was
-- being completed). Reads only the campaigns in those two statuses, a probe of the queue each.
UPDATE campaigns k
SET status = CASE k.status WHEN 'ACTIVE' THEN 'COMPLETED'::campaign_status
                           ELSE 'ACTIVE'::campaign_status END,
    updated_at = now()
WHERE (k.status = 'ACTIVE'
       AND NOT EXISTS (SELECT 1 FROM call_queue q WHERE q.lane = k.id AND q.status = 'PENDING')
       AND NOT EXISTS (SELECT 1 FROM call_queue q WHERE q.lane = k.id AND q.status = 'IN_PROGRESS')
       AND EXISTS (SELECT 1 FROM calls c WHERE c.campaign_id = k.id))
   OR (k.status = 'COMPLETED'
       AND (EXISTS (SELECT 1 FROM call_queue q WHERE q.lane = k.id AND q.status = 'PENDING')
            OR EXISTS (SELECT 1 FROM call_queue q WHERE q.lane = k.id AND q.status = 'IN_PROGRESS')))
