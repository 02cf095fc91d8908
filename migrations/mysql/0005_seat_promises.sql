-- Seat promises (docs/seats.md).
-- lease_nonce: a random value drawn by every grant and part of the lease id, so
--   a lease id is never handed out twice, even after the database went back in
--   time (a restore, a failover that lost transactions). Renewals and releases
--   check it. 0 marks a lease granted before this column existed.
-- promise_ms: the longest promise (ttl_ms) any instance may give for the
--   current lease. A force release keeps the seat taken until every promise
--   already given has run out, which this bounds. Leases granted before this
--   column existed are bounded by their expires_at only (the large default).
ALTER TABLE slots
    ADD COLUMN lease_nonce BIGINT NOT NULL DEFAULT 0,
    ADD COLUMN promise_ms  INT    NOT NULL DEFAULT 2147483647;
ALTER TABLE grant_requests
    ADD COLUMN lease_nonce BIGINT NOT NULL DEFAULT 0;
-- Heartbeats are no longer answered from an instance's memory, so nothing
-- watches the force-release count any more.
DROP TABLE lease_revocations;
