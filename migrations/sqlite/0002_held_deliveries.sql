-- Deliveries held in the ledger instead of in a broker queue; see
-- migrations/postgres/0003_held_deliveries.sql. Timestamps are RFC 3339
-- text of fixed width, so they compare as text.
ALTER TABLE deliveries ADD COLUMN held_until TEXT;

CREATE INDEX deliveries_held ON deliveries (subscription_id, held_until)
    WHERE held_until IS NOT NULL;
