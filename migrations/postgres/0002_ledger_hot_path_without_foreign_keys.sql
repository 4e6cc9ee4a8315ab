-- The two foreign keys on the delivery hot path go: deliveries -> events and
-- attempts -> deliveries.
--
-- PostgreSQL checks a foreign key with a trigger per inserted row that looks
-- up and locks the parent row. For a fan-out of ten deliveries with their
-- first attempts that is twenty such checks per event: measured with the
-- fan-out's own row shapes (50 events x 10 deliveries x 10 attempts per
-- transaction), the inserts took 327 ms with the keys and 200 ms without.
--
-- The ledger keeps the relation itself: an event, its deliveries and their
-- first attempts are written in one transaction, parents first, and the
-- statement that records attempts fails its batch when one names a delivery
-- that is not there (the key's own check, for free: it updates that row).
-- Nothing deletes events or deliveries; a retention job would delete
-- attempts, then deliveries, then events. SQLite keeps its keys: there a check is an index
-- lookup, with no measurable cost.
ALTER TABLE deliveries DROP CONSTRAINT deliveries_event_id_fkey;
ALTER TABLE attempts DROP CONSTRAINT attempts_delivery_id_fkey;
