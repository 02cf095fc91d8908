-- Changes to identities every instance must see within one cluster heartbeat
-- (each keeps an identity cache and open sessions per identity).
-- `identity_revision` is bumped in the same transaction as every create,
-- import and revoke; instances read it on every cluster heartbeat and, when
-- it moved, clear their identity cache and read the revocations logged since.
-- The counter row's lock orders the changes: a revision is committed only
-- after every lower one, so "all revocations up to the revision read" is
-- well defined.
CREATE TABLE identity_revision (
    id       INT    NOT NULL PRIMARY KEY,
    revision BIGINT NOT NULL
) ENGINE=InnoDB;
INSERT INTO identity_revision (id, revision) VALUES (1, 0);

-- One row per revocation, under the revision it bumped to.
CREATE TABLE identity_revocations (
    revision    BIGINT      NOT NULL PRIMARY KEY,
    identity_id CHAR(16)    NOT NULL,
    revoked_at  DATETIME(6) NOT NULL
) ENGINE=InnoDB;
