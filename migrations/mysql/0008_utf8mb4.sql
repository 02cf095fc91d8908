-- Every table in utf8mb4: user and host names reported by clients are any
-- Unicode, and a database created with latin1 (the default of MariaDB before
-- 11.6) could not store them. The collation stays the server's default for
-- utf8mb4; where identifiers must match exactly (feature names) the queries
-- compare them byte for byte.
ALTER DATABASE CHARACTER SET utf8mb4;
ALTER TABLE keyring_canary CONVERT TO CHARACTER SET utf8mb4;
ALTER TABLE licenses CONVERT TO CHARACTER SET utf8mb4;
ALTER TABLE features CONVERT TO CHARACTER SET utf8mb4;
ALTER TABLE slots CONVERT TO CHARACTER SET utf8mb4;
ALTER TABLE grant_requests CONVERT TO CHARACTER SET utf8mb4;
ALTER TABLE identities CONVERT TO CHARACTER SET utf8mb4;
ALTER TABLE admin_tokens CONVERT TO CHARACTER SET utf8mb4;
ALTER TABLE instances CONVERT TO CHARACTER SET utf8mb4;
ALTER TABLE ticket_keys CONVERT TO CHARACTER SET utf8mb4;
