-- The webhooks already on the timeline of attempt $2 of call $1 (see
-- MAX_PROGRESS_PER_ATTEMPT in src/domain/decide.rs).
SELECT count(*) FROM call_events WHERE call_id = $1 AND attempt = $2 AND kind IN ('WEBHOOK_RECEIVED', 'RECONCILED')
