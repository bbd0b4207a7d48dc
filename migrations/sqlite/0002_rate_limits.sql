-- A token's own rate limit and quota (null: none), and its quota count:
-- requests counted in the period starting at quota_period_start (Unix
-- seconds, UTC). Counts are added in batches by every instance; changing
-- the limit or the quota leaves them as they are.
ALTER TABLE tokens ADD COLUMN rate_limit_requests INTEGER;
ALTER TABLE tokens ADD COLUMN rate_limit_window_seconds INTEGER;
ALTER TABLE tokens ADD COLUMN quota_requests INTEGER;
ALTER TABLE tokens ADD COLUMN quota_period TEXT CHECK (quota_period IN ('day', 'month'));
ALTER TABLE tokens ADD COLUMN quota_used INTEGER NOT NULL DEFAULT 0;
ALTER TABLE tokens ADD COLUMN quota_period_start INTEGER NOT NULL DEFAULT 0;
