-- MAX_ATTEMPTS_PER_NUMBER_PER_DAY: the claim counts a number's attempts of the last 24 hours
-- with one range read of this index. Its own migration, as the previous one (a read of all
-- of call_attempts that holds its writes meanwhile).
CREATE INDEX IF NOT EXISTS call_attempts_by_number
    ON call_attempts (to_number, claimed_at) WHERE to_number IS NOT NULL;
