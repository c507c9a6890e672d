-- Cancels one PENDING call of a cancelled campaign (a retry decided after the cancel), as
-- cancel_campaign_calls.sql cancels the others, with its CANCELLED entry. The caller holds
-- the call's row lock.
--   $1 call id
WITH cancelled AS (
    UPDATE calls
    SET status = 'CANCELLED', last_error = 'campaign cancelled', next_attempt_at = NULL,
        waiting_for = NULL, completed_at = now(), updated_at = now()
    WHERE id = $1 AND status = 'PENDING'
    RETURNING id, campaign_id
)
INSERT INTO call_events (call_id, kind, detail)
SELECT id, 'CANCELLED', jsonb_build_object('by', 'campaign', 'campaignId', campaign_id)
FROM cancelled
