-- Deliveries held in the ledger instead of in a broker queue.
--
-- A delivery whose endpoint cannot take it now (its circuit is open after
-- repeated failures, or it is slow and every slot it may use is taken) is
-- not put in a retry queue to come back and be put off again: the ledger
-- holds it, with no message anywhere. `held_until` is when it is due: at
-- once when held, as soon as a worker has room for its endpoint. A worker
-- that claims it pushes `held_until` out by a lease, so no other worker
-- takes it meanwhile. Recording an attempt, or canceling the delivery,
-- clears the hold. Only held rows are indexed, so the index stays as small
-- as the backlog.
ALTER TABLE deliveries ADD COLUMN held_until TIMESTAMPTZ;

CREATE INDEX deliveries_held ON deliveries (subscription_id, held_until)
    WHERE held_until IS NOT NULL;
