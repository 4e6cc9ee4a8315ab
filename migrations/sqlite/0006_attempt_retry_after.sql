-- The Retry-After a receiver sent with an attempt's response (429 or 503
-- asking courier to wait), as sent and cut to 128 bytes: the ledger shows
-- why the next attempt came when it did. NULL for every other response.
ALTER TABLE attempts ADD COLUMN retry_after TEXT;
