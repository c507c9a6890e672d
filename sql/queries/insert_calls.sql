-- Inserts calls in the order given ($1..$9 are parallel arrays, one element per call) and
-- returns the new rows oldest first, leaving out every call whose number is suppressed
-- (the caller names them: a single create is refused, a batch is refused or skips them).
-- Used by the single create (arrays of one) and by the batch route, in one statement. The
-- timeline's CREATED entry is the row itself (created_at); a call the schedule holds back
-- (its window, its notBefore) gets a WAITING entry saying why and until when.
--   $1 ids   $2 numbers   $3 scripts   $4 metadata   $5 notBefore   $6 notAfter
--   $7 time zones   $8 when due, if later than now   $9 why (calls.waiting_for)
--   $10 campaigns (checked open by the caller, in the same transaction: db::campaigns::hold_open)
WITH input AS (
    SELECT *
    FROM UNNEST($1::uuid[], $2::text[], $3::text[], $4::jsonb[], $5::timestamptz[],
                $6::timestamptz[], $7::text[], $8::timestamptz[], $9::text[], $10::uuid[])
        WITH ORDINALITY AS t (id, to_number, script_id, metadata, not_before, not_after,
                              timezone, due_at, waiting_for, campaign_id, ord)
),
inserted AS (
    INSERT INTO calls (id, to_number, script_id, metadata, not_before, not_after, timezone,
                       next_attempt_at, waiting_for, campaign_id)
    SELECT id, to_number, script_id, metadata, not_before, not_after, timezone,
           COALESCE(due_at, now()), waiting_for, campaign_id
    FROM input
    WHERE NOT EXISTS (
        SELECT 1 FROM suppressions s
        WHERE s.number = input.to_number AND (s.expires_at IS NULL OR s.expires_at > now())
    )
    ORDER BY ord
    RETURNING *
),
waiting AS (
    INSERT INTO call_events (call_id, kind, detail)
    SELECT id, 'WAITING', jsonb_build_object('reason', waiting_for, 'until', next_attempt_at)
    FROM inserted
    WHERE waiting_for IS NOT NULL
)
SELECT * FROM inserted ORDER BY seq
