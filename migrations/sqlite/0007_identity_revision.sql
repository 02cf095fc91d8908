-- See migrations/mysql/0007_identity_revision.sql. SQLite has one writer,
-- which orders the changes by itself.
CREATE TABLE identity_revision (
    id       INTEGER NOT NULL PRIMARY KEY,
    revision INTEGER NOT NULL
);
INSERT INTO identity_revision (id, revision) VALUES (1, 0);

CREATE TABLE identity_revocations (
    revision    INTEGER NOT NULL PRIMARY KEY,
    identity_id TEXT    NOT NULL,
    revoked_at  INTEGER NOT NULL
);
