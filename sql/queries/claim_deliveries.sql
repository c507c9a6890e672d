-- Claims due deliveries for the delivery workers, and returns each with its event and its
-- endpoint as they are now.
--   $1 deliveries in flight per endpoint at most, across every replica
--   $2 deliveries claimed at most    $3 the lease, in seconds
-- Each endpoint with something due has its row locked (FOR NO KEY UPDATE, which the
-- foreign keys of new deliveries do not wait for) while its deliveries in flight are
-- counted, so two replicas never both fill its room; an endpoint another claim holds is
-- skipped, not waited for. A delivery claimed has its attempt counted and is due again when
-- the lease ends: a worker that dies mid-send leaves it to be sent again then.
WITH endpoints AS (
    SELECT p.id
    FROM event_endpoints p
    WHERE p.enabled
      AND EXISTS (
          SELECT 1 FROM event_deliveries d
          WHERE d.endpoint_id = p.id AND d.status = 'PENDING' AND d.next_attempt_at <= now()
      )
    ORDER BY p.id
    FOR NO KEY UPDATE SKIP LOCKED
),
room AS (
    SELECT e.id,
           $1 - (SELECT count(*) FROM event_deliveries d
                 WHERE d.endpoint_id = e.id AND d.leased_until > now()) AS free
    FROM endpoints e
),
picked AS (
    SELECT d.id
    FROM room r
    CROSS JOIN LATERAL (
        SELECT d.id, d.next_attempt_at
        FROM event_deliveries d
        WHERE d.endpoint_id = r.id AND d.status = 'PENDING' AND d.next_attempt_at <= now()
        ORDER BY d.next_attempt_at
        LIMIT greatest(r.free, 0)
        FOR UPDATE SKIP LOCKED
    ) d
    ORDER BY d.next_attempt_at
    LIMIT $2
),
claimed AS (
    UPDATE event_deliveries d
    SET attempts = d.attempts + 1,
        leased_until = now() + make_interval(secs => $3),
        next_attempt_at = now() + make_interval(secs => $3),
        last_attempt_at = now()
    FROM picked
    WHERE d.id = picked.id
    RETURNING d.id, d.event_id, d.endpoint_id, d.attempts
)
SELECT c.id AS delivery_id, c.event_id, e.type AS event_type, e.occurred_at, c.attempts AS attempt, p.*
FROM claimed c
JOIN client_events e ON e.id = c.event_id
JOIN event_endpoints p ON p.id = c.endpoint_id
