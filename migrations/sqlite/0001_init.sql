-- floatlm schema for the embedded SQLite backend.
-- Times are INTEGER microseconds since the Unix epoch (UTC).
-- Sealed columns hold AES-256-GCM blobs (see src/crypto/keyring.rs).

CREATE TABLE keyring_canary (
    key_id      TEXT    NOT NULL PRIMARY KEY,
    sealed      BLOB    NOT NULL,
    created_at  INTEGER NOT NULL
);

CREATE TABLE licenses (
    license_id    TEXT    NOT NULL PRIMARY KEY,
    serial        INTEGER NOT NULL,
    customer      TEXT    NOT NULL,
    vendor_key_id TEXT    NOT NULL,
    digest        TEXT    NOT NULL,
    sealed        BLOB    NOT NULL,
    applied_at    INTEGER NOT NULL
);

-- One row per feature of a license; seats = 0 once the license drops it.
CREATE TABLE features (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    license_id  TEXT    NOT NULL,
    name        TEXT    NOT NULL,
    seats       INTEGER NOT NULL,
    version     TEXT    NULL,
    not_before  INTEGER NULL,
    expires_at  INTEGER NULL,
    UNIQUE (license_id, name)
);
CREATE INDEX features_name ON features (name);

-- Seat slots. state: 0 active, 1 retiring (held, license shrank), 2 retired.
-- A slot is held while expires_at > now; lease_gen is the fencing token.
CREATE TABLE slots (
    feature_id  INTEGER NOT NULL,
    slot_no     INTEGER NOT NULL,
    state       INTEGER NOT NULL DEFAULT 0,
    lease_gen   INTEGER NOT NULL DEFAULT 0,
    holder      TEXT    NULL,
    client_info TEXT    NULL,
    request_id  TEXT    NULL,
    granted_by  TEXT    NULL,
    granted_at  INTEGER NULL,
    expires_at  INTEGER NULL,
    PRIMARY KEY (feature_id, slot_no)
);
CREATE INDEX slots_pick ON slots (feature_id, state, expires_at);

-- Makes grants idempotent: a retried request id returns the first grant.
CREATE TABLE grant_requests (
    holder      TEXT    NOT NULL,
    request_id  TEXT    NOT NULL,
    feature_id  INTEGER NOT NULL,
    slot_no     INTEGER NOT NULL,
    lease_gen   INTEGER NOT NULL,
    created_at  INTEGER NOT NULL,
    expires_at  INTEGER NOT NULL,
    PRIMARY KEY (holder, request_id)
);
CREATE INDEX grant_requests_age ON grant_requests (created_at);

CREATE TABLE identities (
    id          TEXT    NOT NULL PRIMARY KEY,
    name        TEXT    NOT NULL,
    sealed      BLOB    NOT NULL,
    created_at  INTEGER NOT NULL,
    expires_at  INTEGER NULL,
    revoked_at  INTEGER NULL
);

CREATE TABLE admin_tokens (
    id          TEXT    NOT NULL PRIMARY KEY,
    name        TEXT    NOT NULL,
    role        TEXT    NOT NULL,
    token_hash  TEXT    NOT NULL UNIQUE,
    created_at  INTEGER NOT NULL,
    revoked_at  INTEGER NULL
);
