-- An event id is the upstream's, and two workspaces may well choose the
-- same one (`order-1001-created`). Keyed by id alone, the second
-- workspace's event was taken for a redelivery of the first's: it shared
-- the first's row, and its deliveries were made with the first's data.
-- Events are keyed by (workspace, id) from here on; every read of an event
-- names both.
--
-- The id leads the key: ids that grow with time (courier's own `evt_`
-- ids, most upstreams') then insert at the right-hand end of the index
-- whatever the workspace, where (workspace, id) would spread a busy
-- ledger's inserts over one run per workspace. Every lookup names both.
--
-- Existing ids are unique by themselves, so the new key holds for every
-- row already recorded. Deliveries keep no foreign key to events (0002),
-- so nothing else refers to the old key.
ALTER TABLE events DROP CONSTRAINT events_pkey;
ALTER TABLE events ADD PRIMARY KEY (id, workspace_id);
