-- Each event endpoint and how its deliveries stand: pending (due now, in flight, waiting for
-- a retry), failed, delivered in the last hour, the oldest pending and the last error. An
-- endpoint whose oldest pending grows while nothing is delivered is down, or refusing.
--   psql "$DATABASE_URL" -f sql/ops/event_deliveries.sql
SELECT p.id AS endpoint_id,
       p.url,
       p.enabled,
       count(*) FILTER (WHERE d.status = 'PENDING') AS pending,
       count(*) FILTER (WHERE d.status = 'PENDING' AND d.next_attempt_at <= now()
                          AND (d.leased_until IS NULL OR d.leased_until <= now())) AS due_now,
       count(*) FILTER (WHERE d.leased_until > now()) AS in_flight,
       count(*) FILTER (WHERE d.status = 'PENDING' AND d.attempts > 0) AS retrying,
       count(*) FILTER (WHERE d.status = 'FAILED') AS failed,
       count(*) FILTER (WHERE d.status = 'DELIVERED'
                          AND d.delivered_at > now() - interval '1 hour') AS delivered_last_hour,
       min(d.created_at) FILTER (WHERE d.status = 'PENDING') AS oldest_pending,
       (SELECT coalesce(l.last_status_code::text, '') || ' ' || coalesce(l.last_error, '')
        FROM event_deliveries l
        WHERE l.endpoint_id = p.id AND l.last_error IS NOT NULL
        ORDER BY l.last_attempt_at DESC NULLS LAST
        LIMIT 1) AS last_error
FROM event_endpoints p
LEFT JOIN event_deliveries d ON d.endpoint_id = p.id
GROUP BY p.id, p.url, p.enabled
ORDER BY pending DESC, p.seq;
