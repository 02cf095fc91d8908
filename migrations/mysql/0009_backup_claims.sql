-- Scheduled backups (docs/operations.md, "Backups"): one row per interval
-- slot (the Unix time divided by backup_interval), claimed by the one
-- instance that takes that backup. The primary key makes the claim: an
-- INSERT IGNORE that inserts a row wins it. A claim whose instance stopped
-- before finishing (finished_at still NULL) or whose backup failed is taken
-- over by the next instance that notices.
CREATE TABLE backup_claims (
    slot        BIGINT        NOT NULL PRIMARY KEY,
    instance_id VARCHAR(64)   NOT NULL,
    claimed_at  DATETIME(6)   NOT NULL,
    finished_at DATETIME(6)   NULL,
    outcome     VARCHAR(16)   NULL,
    file        VARCHAR(255)  NULL,
    bytes       BIGINT        NULL,
    digest      CHAR(64)      NULL,
    error       VARCHAR(1024) NULL
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4;
