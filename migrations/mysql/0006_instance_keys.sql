-- Which master keys each instance holds, as `id:fingerprint` pairs (an HMAC
-- of a fixed label under the key: it identifies the key, reveals nothing of
-- it). Key rotation refuses while a live instance lacks the new key, and a
-- start-up with a different key of the same id is refused while an instance
-- with the other one is alive.
-- lease_ttl_ms: the longest promise the instance gives; a quarantine after a
-- restore holds every seat at least the largest of them.
ALTER TABLE instances
    ADD COLUMN key_ids      VARCHAR(1024) NOT NULL DEFAULT '',
    ADD COLUMN lease_ttl_ms BIGINT        NOT NULL DEFAULT 0;
