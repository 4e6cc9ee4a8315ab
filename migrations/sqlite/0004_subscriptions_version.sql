-- A counter that every change to the subscriptions table moves forward, in
-- the transaction that makes it; see
-- migrations/postgres/0006_subscriptions_version.sql for what reads it.
CREATE TABLE subscriptions_version (
    singleton  INTEGER NOT NULL PRIMARY KEY CHECK (singleton = 1),
    version    INTEGER NOT NULL
) STRICT;

INSERT INTO subscriptions_version (singleton, version) VALUES (1, 0);

CREATE TRIGGER subscriptions_inserted AFTER INSERT ON subscriptions
BEGIN
    UPDATE subscriptions_version SET version = version + 1;
END;

CREATE TRIGGER subscriptions_updated AFTER UPDATE ON subscriptions
BEGIN
    UPDATE subscriptions_version SET version = version + 1;
END;

CREATE TRIGGER subscriptions_deleted AFTER DELETE ON subscriptions
BEGIN
    UPDATE subscriptions_version SET version = version + 1;
END;
