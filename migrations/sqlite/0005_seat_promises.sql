-- Seat promises (docs/seats.md); see migrations/mysql/0005_seat_promises.sql.
ALTER TABLE slots ADD COLUMN lease_nonce INTEGER NOT NULL DEFAULT 0;
ALTER TABLE slots ADD COLUMN promise_ms INTEGER NOT NULL DEFAULT 2147483647;
ALTER TABLE grant_requests ADD COLUMN lease_nonce INTEGER NOT NULL DEFAULT 0;
DROP TABLE lease_revocations;
