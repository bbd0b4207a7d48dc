-- A token's own rate limit and quota (null: none), and its quota count:
-- requests counted in the period starting at quota_period_start (Unix
-- seconds, UTC). Counts are added in batches by every instance; changing
-- the limit or the quota leaves them as they are.
ALTER TABLE tokens ADD COLUMN rate_limit_requests BIGINT;
ALTER TABLE tokens ADD COLUMN rate_limit_window_seconds BIGINT;
ALTER TABLE tokens ADD COLUMN quota_requests BIGINT;
ALTER TABLE tokens ADD COLUMN quota_period TEXT CHECK (quota_period IN ('day', 'month'));
ALTER TABLE tokens ADD COLUMN quota_used BIGINT NOT NULL DEFAULT 0;
ALTER TABLE tokens ADD COLUMN quota_period_start BIGINT NOT NULL DEFAULT 0;
