-- Every running instance records itself and refreshes last_seen; an operator
-- can ask one to drain (its healthz then answers 503) or remove a dead one.
CREATE TABLE instances (
    id              TEXT    NOT NULL PRIMARY KEY,
    address         TEXT    NOT NULL,
    admin_address   TEXT    NOT NULL,
    version         TEXT    NOT NULL,
    started_at      INTEGER NOT NULL,
    last_seen       INTEGER NOT NULL,
    drain_requested INTEGER NOT NULL DEFAULT 0
);
