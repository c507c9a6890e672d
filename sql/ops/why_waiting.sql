-- Why a given call is waiting (or not): its status, and for a PENDING call the first thing
-- holding it back: its number suppressed (it is cancelled at its turn), its notAfter passed
-- (it expires), what its schedule waits for and until when (its notBefore, its calling
-- window, its number's daily limit, or a deadline that comes before its window opens), its
-- backoff, its campaign (paused, cancelled, not started, ended, its cap full), its number
-- busy with another call, or the cap being full.
--   psql "$DATABASE_URL" -v call_id=<uuid> -v cap=30 -f sql/ops/why_waiting.sql
-- `cap` is the service's MAX_CONCURRENT_CALLS. The calling window is computed by the
-- service, not here: a call said to be claimable is still checked against its window, its
-- deadline, its number's suppression and daily limit when a claim reaches it.
WITH slots AS (
    SELECT count(*) AS in_progress FROM calls WHERE status = 'IN_PROGRESS'
)
SELECT c.id,
       c.status,
       c.to_number,
       c.attempts,
       c.waiting_for,
       c.not_before,
       c.not_after,
       c.timezone,
       CASE
           WHEN c.status <> 'PENDING' THEN 'not waiting: ' || c.status
           WHEN sup.number IS NOT NULL THEN
               'suppressed: ' || sup.reason
               || COALESCE(' (until ' || to_char(sup.expires_at AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS "UTC"') || ')', '')
               || '; cancelled at its turn, never dialed'
           WHEN c.not_after <= now() THEN
               'deadline passed: notAfter '
               || to_char(c.not_after AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS "UTC"')
               || '; it expires without being dialed'
           WHEN k.status = 'PAUSED' THEN 'campaign paused (' || k.name || '): dialed once it is resumed'
           WHEN k.status = 'CANCELLED' THEN 'campaign cancelled (' || k.name || '): the call is being cancelled'
           WHEN k.end_at <= now() THEN
               'campaign ended (' || k.name || ') at '
               || to_char(k.end_at AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS "UTC"')
               || ': it expires without being dialed'
           WHEN k.start_at > now() THEN
               'campaign not started (' || k.name || '): it starts '
               || to_char(k.start_at AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS "UTC"')
           WHEN c.waiting_for IS NOT NULL AND c.next_attempt_at > now() THEN
               CASE c.waiting_for
                   WHEN 'CALLING_WINDOW' THEN
                       'calling window: closed for the callee'
                       || COALESCE(' (' || c.timezone || ')', '')
                       || '; opens '
                   WHEN 'NOT_BEFORE' THEN 'notBefore: not dialed before '
                   WHEN 'DAILY_LIMIT' THEN
                       'daily limit: ' || (
                           SELECT count(*) FROM call_attempts a
                           WHERE a.to_number = c.to_number
                             AND a.claimed_at > now() - interval '24 hours'
                             AND a.status <> 'RATE_LIMITED'
                       ) || ' attempts to ' || c.to_number
                       || ' in the last 24 hours (MAX_ATTEMPTS_PER_NUMBER_PER_DAY); due again '
                   WHEN 'DEADLINE' THEN
                       'deadline: its window opens only after its notAfter; it expires '
                   ELSE c.waiting_for || ': due '
               END
               || to_char(c.next_attempt_at AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS "UTC"')
               || ', in ' || date_trunc('second', c.next_attempt_at - now())
           WHEN c.next_attempt_at > now() THEN
               'backoff: due in ' || date_trunc('second', c.next_attempt_at - now())
               || COALESCE(' after: ' || c.last_error, '')
           WHEN w.number_busy THEN 'number busy: another call to ' || c.to_number || ' is in progress'
           WHEN k.max_concurrent_calls <= (
               SELECT count(*) FROM call_queue q WHERE q.lane = k.id AND q.status = 'IN_PROGRESS'
           ) THEN 'campaign cap full (' || k.name || '): ' || k.max_concurrent_calls
                  || ' of its calls in progress (maxConcurrentCalls)'
           WHEN s.in_progress >= :cap THEN 'cap full: ' || s.in_progress || ' of ' || :cap || ' slots in use'
           ELSE 'claimable now: ' || (
               SELECT count(*) FROM calls_waiting ahead
               WHERE (ahead.next_attempt_at, ahead.seq) < (c.next_attempt_at, c.seq)
                 AND ahead.due AND NOT ahead.number_busy AND NOT ahead.suppressed
                 AND (ahead.not_after IS NULL OR ahead.not_after > now())
           ) || ' claimable calls ahead of it'
       END AS why
FROM calls c
CROSS JOIN slots s
LEFT JOIN calls_waiting w ON w.id = c.id
LEFT JOIN campaigns k ON k.id = c.campaign_id
LEFT JOIN suppressions sup
       ON sup.number = c.to_number AND (sup.expires_at IS NULL OR sup.expires_at > now())
WHERE c.id = :'call_id';
