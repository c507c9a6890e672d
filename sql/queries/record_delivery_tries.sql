-- Records how tries of deliveries ended, many at once (group commit).
--   $1 delivery ids   $2 the try's number, as claimed
--   $3 the new status (PENDING: tried again at $4; DELIVERED; FAILED)
--   $5 the answer's status code, if one came   $6 what went wrong, if it did
-- A result for a try that is no longer the delivery's latest (its lease ran out and another
-- worker took it, or it was sent again on demand) changes nothing unless it delivered: a
-- 2xx is news whoever brings it.
UPDATE event_deliveries d
SET status = t.status::event_delivery_status,
    leased_until = NULL,
    next_attempt_at = CASE WHEN t.status = 'PENDING' THEN t.due END,
    delivered_at = CASE WHEN t.status = 'DELIVERED' THEN now() END,
    last_status_code = t.code,
    last_error = t.error
FROM unnest($1::uuid[], $2::int[], $3::text[], $4::timestamptz[], $5::int[], $6::text[])
     AS t (id, attempt, status, due, code, error)
WHERE d.id = t.id
  AND d.status = 'PENDING'
  AND (t.status = 'DELIVERED' OR d.attempts = t.attempt)
