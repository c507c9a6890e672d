-- Mends campaign statuses the triggers on `calls` could not see right: ACTIVE with calls
-- and none open is COMPLETED (its last two calls ended at once, in two transactions that
-- each saw the other's open, or its row was held when its last call ended); COMPLETED with
-- calls open is ACTIVE (calls written past the triggers; only campaigns changed in the last
-- hour are looked at, so the pass does not grow with every campaign ever completed). Reads
-- a probe of the queue per campaign; rows someone holds are left for the next pass.
WITH mend AS (
    SELECT k.id,
           CASE k.status WHEN 'ACTIVE' THEN 'COMPLETED'::campaign_status
                         ELSE 'ACTIVE'::campaign_status END AS status
    FROM campaigns k
    WHERE (k.status = 'ACTIVE'
           AND NOT campaign_has_open_calls(k.id)
           AND EXISTS (SELECT 1 FROM calls c WHERE c.campaign_id = k.id))
       OR (k.status = 'COMPLETED' AND k.updated_at > now() - interval '1 hour'
           AND campaign_has_open_calls(k.id))
    FOR NO KEY UPDATE OF k SKIP LOCKED
)
UPDATE campaigns k
SET status = mend.status, updated_at = now()
FROM mend
WHERE k.id = mend.id
