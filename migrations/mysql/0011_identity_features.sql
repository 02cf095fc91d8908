-- Feature assignment (`assignment = manual`, docs/operations.md,
-- "Identities and tokens"): the features each identity may see and check
-- out. Unused while assignment = auto.
CREATE TABLE identity_features (
    identity_id VARCHAR(64) NOT NULL,
    feature     VARCHAR(64) NOT NULL,
    assigned_at DATETIME(6) NOT NULL,
    PRIMARY KEY (identity_id, feature)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4;
