-- A counter that every change to the subscriptions table moves forward,
-- in the transaction that makes the change.
--
-- Workers match events against an in-memory index of the subscriptions.
-- Before matching an event they read this counter (one row, one index
-- lookup, shared by every event that arrived meanwhile) and reload the
-- index when it moved: so an event published after a webhook change
-- returned is matched against the changed set, whichever way the change
-- was made (API, GraphQL, the admin CLI, or SQL by hand).
CREATE TABLE subscriptions_version (
    singleton  BOOLEAN PRIMARY KEY DEFAULT true CHECK (singleton),
    version    BIGINT NOT NULL
);

INSERT INTO subscriptions_version (singleton, version) VALUES (true, 0);

CREATE FUNCTION courier_subscriptions_changed() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    UPDATE subscriptions_version SET version = version + 1;
    RETURN NULL;
END
$$;

CREATE TRIGGER subscriptions_changed
    AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON subscriptions
    FOR EACH STATEMENT EXECUTE FUNCTION courier_subscriptions_changed();
