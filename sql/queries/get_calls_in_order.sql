-- Calls by id, in the order of the ids given ($1): the calls a replayed Idempotency-Key
-- answers with, a batch's in the order it was sent.
SELECT c.*
FROM unnest($1::uuid[]) WITH ORDINALITY AS i (id, ord)
JOIN calls c ON c.id = i.id
ORDER BY i.ord
