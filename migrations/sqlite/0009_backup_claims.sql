-- See migrations/mysql/0009_backup_claims.sql.
CREATE TABLE backup_claims (
    slot        INTEGER NOT NULL PRIMARY KEY,
    instance_id TEXT    NOT NULL,
    claimed_at  INTEGER NOT NULL,
    finished_at INTEGER NULL,
    outcome     TEXT    NULL,
    file        TEXT    NULL,
    bytes       INTEGER NULL,
    digest      TEXT    NULL,
    error       TEXT    NULL
);
