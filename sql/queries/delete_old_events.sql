-- Retention: deletes up to $2 client events that occurred before $1, with their deliveries,
-- delivered or failed; an event with a delivery still PENDING is kept until it is done, so
-- retention never breaks at-least-once. Returns how many events were deleted.
--   $1 occurred before this
--   $2 most events to delete
WITH doomed AS (
    SELECT e.id FROM client_events e
    WHERE e.occurred_at < $1
      AND NOT EXISTS (
          SELECT 1 FROM event_deliveries d WHERE d.event_id = e.id AND d.status = 'PENDING'
      )
    ORDER BY e.occurred_at
    LIMIT $2
    FOR UPDATE SKIP LOCKED
),
deliveries AS (
    DELETE FROM event_deliveries d USING doomed WHERE d.event_id = doomed.id
),
deleted AS (
    DELETE FROM client_events WHERE id IN (SELECT id FROM doomed) RETURNING 1
)
SELECT count(*) FROM deleted
