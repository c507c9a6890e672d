-- A campaign's calls, newest first (`GET /api/v1/calls?campaignId=`). Its own migration, as
-- it reads all of `calls` (IF NOT EXISTS, so an operator may build it CONCURRENTLY first).
CREATE INDEX IF NOT EXISTS calls_by_campaign
    ON calls (campaign_id, seq DESC) WHERE campaign_id IS NOT NULL;
