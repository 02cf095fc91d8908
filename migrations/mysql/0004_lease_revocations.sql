-- Operator force-releases, counted. Instances answer most heartbeats from
-- memory; one that sees this count move forgets what it remembers, so a
-- force-released lease is not kept alive by a remembered expiry.
CREATE TABLE lease_revocations (
    id    INT    NOT NULL PRIMARY KEY,
    count BIGINT NOT NULL
) ENGINE=InnoDB;
INSERT INTO lease_revocations (id, count) VALUES (1, 0);
