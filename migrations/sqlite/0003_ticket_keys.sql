-- Cluster-wide keys that seal resumption tickets. One per rotation period;
-- the id is the Unix second the period starts. The key itself is sealed by
-- the master key (AAD: table ticket_keys, column sealed, row id).
CREATE TABLE ticket_keys (
    id         INTEGER NOT NULL PRIMARY KEY,
    sealed     BLOB    NOT NULL
);
