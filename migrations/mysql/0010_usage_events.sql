-- Usage records (docs/operations.md, "Usage records"): one append-only row
-- per seat event, for billing and planning. Seat events (grant, release,
-- expiry, force_release) are written by the trigger below, inside the very
-- statement, hence the transaction, that changes the slot: a rolled-back
-- grant leaves no row and a committed one always has its row. Denials have
-- no seat change; the instance writes them in batches, best effort.
CREATE TABLE usage_events (
    id          BIGINT       NOT NULL AUTO_INCREMENT PRIMARY KEY,
    at          DATETIME(6)  NOT NULL,
    event       VARCHAR(16)  NOT NULL,
    feature     VARCHAR(64)  NOT NULL,
    feature_id  BIGINT       NULL,
    slot_no     BIGINT       NULL,
    lease_gen   BIGINT       NULL,
    lease_nonce BIGINT       NULL,
    identity    VARCHAR(64)  NULL,
    user        VARCHAR(255) NULL,
    host        VARCHAR(255) NULL,
    address     VARCHAR(64)  NULL,
    instance    VARCHAR(64)  NULL,
    reason      VARCHAR(64)  NULL,
    KEY usage_events_at (at),
    KEY usage_events_lease (feature_id, slot_no, lease_gen)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4;

-- One statement, so no DELIMITER is needed. The three arms are exclusive
-- per lease: a raised lease_gen ends the old lease (expiry, if it was never
-- released) and starts the new one (grant); a cleared holder with the same
-- lease_gen is a release (expires_at cleared), a force release (revoked
-- while unexpired) or the sweep of an expired lease (expiry). NOW(6) is the
-- statement's time, the same the slot UPDATE compared against.
CREATE TRIGGER usage_on_slots AFTER UPDATE ON slots FOR EACH ROW
INSERT INTO usage_events (at, event, feature, feature_id, slot_no, lease_gen, lease_nonce, identity, user, host, instance)
SELECT e.at, e.event, f.name, NEW.feature_id, NEW.slot_no, e.gen, e.nonce, e.holder,
       CASE WHEN LOCATE('@', e.who) > 0
            THEN LEFT(e.who, CHAR_LENGTH(e.who) - CHAR_LENGTH(SUBSTRING_INDEX(e.who, '@', -1)) - 1)
            ELSE e.who END,
       CASE WHEN LOCATE('@', e.who) > 0 THEN SUBSTRING_INDEX(e.who, '@', -1) ELSE NULL END,
       e.inst
FROM (
    SELECT OLD.expires_at AS at, 'expiry' AS event, OLD.lease_gen AS gen, OLD.lease_nonce AS nonce,
           OLD.holder AS holder, SUBSTRING_INDEX(OLD.client_info, ' (', 1) AS who, OLD.granted_by AS inst
    FROM DUAL
    WHERE OLD.holder IS NOT NULL AND OLD.expires_at IS NOT NULL
      AND (NEW.lease_gen <> OLD.lease_gen
           OR (NEW.holder IS NULL AND NEW.expires_at IS NOT NULL AND OLD.expires_at <= NOW(6)))
    UNION ALL
    SELECT NOW(6), CASE WHEN NEW.expires_at IS NULL THEN 'release' ELSE 'force_release' END,
           OLD.lease_gen, OLD.lease_nonce, OLD.holder, SUBSTRING_INDEX(OLD.client_info, ' (', 1), OLD.granted_by
    FROM DUAL
    WHERE OLD.holder IS NOT NULL AND NEW.holder IS NULL AND NEW.lease_gen = OLD.lease_gen
      AND (NEW.expires_at IS NULL OR OLD.expires_at > NOW(6))
    UNION ALL
    SELECT NEW.granted_at, 'grant', NEW.lease_gen, NEW.lease_nonce, NEW.holder,
           SUBSTRING_INDEX(NEW.client_info, ' (', 1), NEW.granted_by
    FROM DUAL
    WHERE NEW.lease_gen <> OLD.lease_gen AND NEW.holder IS NOT NULL
) e JOIN features f ON f.id = NEW.feature_id;
