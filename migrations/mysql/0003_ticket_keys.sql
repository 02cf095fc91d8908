-- Cluster-wide keys that seal resumption tickets. One per rotation period;
-- the id is the Unix second the period starts, so every instance computes the
-- same id and INSERT IGNORE keeps the first. The key itself is sealed by the
-- master key (AAD: table ticket_keys, column sealed, row id).
CREATE TABLE ticket_keys (
    id         BIGINT      NOT NULL PRIMARY KEY,
    sealed     BLOB        NOT NULL,
    created_at DATETIME(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6)
) ENGINE=InnoDB;
