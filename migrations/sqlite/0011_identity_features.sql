-- Feature assignment; see migrations/mysql/0011_identity_features.sql.
CREATE TABLE identity_features (
    identity_id TEXT    NOT NULL,
    feature     TEXT    NOT NULL,
    assigned_at INTEGER NOT NULL,
    PRIMARY KEY (identity_id, feature)
);
