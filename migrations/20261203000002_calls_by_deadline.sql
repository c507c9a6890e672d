-- The sweeper ends PENDING calls whose notAfter passed, wherever they stand in the queue.
-- A migration of its own, after the columns' one has committed: the build reads all of
-- `calls` under a SHARE lock, which lets reads through and holds writes (creates, claims,
-- webhooks) for the length of that read, about a second per million calls. (CREATE INDEX
-- CONCURRENTLY would hold nothing, but it waits for every open transaction, and replicas
-- that start together wait for this migration in one: it would deadlock them.) IF NOT
-- EXISTS lets an operator build it beforehand, CONCURRENTLY, under this name.
CREATE INDEX IF NOT EXISTS calls_pending_by_deadline
    ON calls (not_after) WHERE status = 'PENDING' AND not_after IS NOT NULL;
