-- Every running instance records itself and refreshes last_seen; an operator
-- can ask one to drain (its healthz then answers 503) or remove a dead one.
CREATE TABLE instances (
    id              VARCHAR(64)  NOT NULL PRIMARY KEY,
    address         VARCHAR(255) NOT NULL,
    admin_address   VARCHAR(255) NOT NULL,
    version         VARCHAR(32)  NOT NULL,
    started_at      DATETIME(6)  NOT NULL,
    last_seen       DATETIME(6)  NOT NULL,
    drain_requested TINYINT      NOT NULL DEFAULT 0
) ENGINE=InnoDB;
