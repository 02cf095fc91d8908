-- floatlm schema for MySQL 8 / MariaDB 10.6+ (InnoDB).
-- Sealed columns hold AES-256-GCM blobs (see src/crypto/keyring.rs).

CREATE TABLE keyring_canary (
    key_id      VARCHAR(32)  NOT NULL PRIMARY KEY,
    sealed      VARBINARY(255) NOT NULL,
    created_at  DATETIME(6)  NOT NULL DEFAULT CURRENT_TIMESTAMP(6)
) ENGINE=InnoDB;

CREATE TABLE licenses (
    license_id    VARCHAR(64)  NOT NULL PRIMARY KEY,
    serial        BIGINT       NOT NULL,
    customer      VARCHAR(256) NOT NULL,
    vendor_key_id VARCHAR(16)  NOT NULL,
    digest        CHAR(64)     NOT NULL,
    sealed        MEDIUMBLOB   NOT NULL,
    applied_at    DATETIME(6)  NOT NULL
) ENGINE=InnoDB;

-- One row per feature of a license; seats = 0 once the license drops it.
CREATE TABLE features (
    id          BIGINT       NOT NULL AUTO_INCREMENT PRIMARY KEY,
    license_id  VARCHAR(64)  NOT NULL,
    name        VARCHAR(64)  NOT NULL,
    seats       INT          NOT NULL,
    version     VARCHAR(64)  NULL,
    not_before  DATETIME(6)  NULL,
    expires_at  DATETIME(6)  NULL,
    UNIQUE KEY features_license_name (license_id, name),
    KEY features_name (name)
) ENGINE=InnoDB;

-- Seat slots. state: 0 active, 1 retiring (held, license shrank), 2 retired.
-- A slot is held while expires_at > NOW(6); lease_gen is the fencing token.
CREATE TABLE slots (
    feature_id  BIGINT       NOT NULL,
    slot_no     INT          NOT NULL,
    state       TINYINT      NOT NULL DEFAULT 0,
    lease_gen   BIGINT       NOT NULL DEFAULT 0,
    holder      VARCHAR(64)  NULL,
    client_info VARCHAR(255) NULL,
    request_id  VARCHAR(96)  NULL,
    granted_by  VARCHAR(64)  NULL,
    granted_at  DATETIME(6)  NULL,
    expires_at  DATETIME(6)  NULL,
    PRIMARY KEY (feature_id, slot_no),
    KEY slots_pick (feature_id, state, expires_at)
) ENGINE=InnoDB;

-- Makes grants idempotent: a retried request id returns the first grant.
CREATE TABLE grant_requests (
    holder      VARCHAR(64)  NOT NULL,
    request_id  VARCHAR(96)  NOT NULL,
    feature_id  BIGINT       NOT NULL,
    slot_no     INT          NOT NULL,
    lease_gen   BIGINT       NOT NULL,
    created_at  DATETIME(6)  NOT NULL,
    expires_at  DATETIME(6)  NOT NULL,
    PRIMARY KEY (holder, request_id),
    KEY grant_requests_age (created_at)
) ENGINE=InnoDB;

CREATE TABLE identities (
    id          CHAR(16)     NOT NULL PRIMARY KEY,
    name        VARCHAR(128) NOT NULL,
    sealed      VARBINARY(512) NOT NULL,
    created_at  DATETIME(6)  NOT NULL,
    expires_at  DATETIME(6)  NULL,
    revoked_at  DATETIME(6)  NULL
) ENGINE=InnoDB;

CREATE TABLE admin_tokens (
    id          CHAR(16)     NOT NULL PRIMARY KEY,
    name        VARCHAR(128) NOT NULL,
    role        VARCHAR(16)  NOT NULL,
    token_hash  CHAR(64)     NOT NULL,
    created_at  DATETIME(6)  NOT NULL,
    revoked_at  DATETIME(6)  NULL,
    UNIQUE KEY admin_tokens_hash (token_hash)
) ENGINE=InnoDB;
