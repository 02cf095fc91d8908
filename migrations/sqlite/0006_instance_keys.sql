-- See migrations/mysql/0006_instance_keys.sql.
ALTER TABLE instances ADD COLUMN key_ids TEXT NOT NULL DEFAULT '';
ALTER TABLE instances ADD COLUMN lease_ttl_ms INTEGER NOT NULL DEFAULT 0;
