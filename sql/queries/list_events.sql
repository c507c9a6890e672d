-- One page of a call's timeline, oldest first, after entry $2 (0: from the start).
--   $1 call id    $3 the most entries
SELECT * FROM call_events WHERE call_id = $1 AND id > $2 ORDER BY id LIMIT $3
