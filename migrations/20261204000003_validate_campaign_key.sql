-- Every call's campaign exists: the check of the campaigns migration, now made for the rows
-- stored before it too (a read of `calls` that lets its writes through meanwhile).
ALTER TABLE calls VALIDATE CONSTRAINT calls_campaign_id_fkey;
