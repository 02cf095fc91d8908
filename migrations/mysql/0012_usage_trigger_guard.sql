-- The usage trigger of 0010, guarded: a renewal only raises expires_at, and
-- an AFTER UPDATE trigger that evaluates its three arms for such a row costs
-- MariaDB about 70 us per row (a batch of 4,000 renewals held its row locks
-- 0.3 s longer; measured on 60,000 single-column UPDATEs: 0.07 s with no
-- trigger, 4.3-4.8 s with 0010's, 0.4 s with this one). The IF is exactly
-- the union of the arms' conditions (a new lease_gen, or a holder cleared),
-- so the same events are written.
--
-- CREATE OR REPLACE swaps the trigger in one statement, so no seat change
-- made by an instance still running during a rolling upgrade goes
-- unrecorded (a DROP and a CREATE would leave a moment without a trigger).
-- Only MariaDB has it: the statement sits in a MariaDB-only executable
-- comment, and MySQL keeps 0010's trigger (the same events, at 0010's cost).
-- A compound body needs no DELIMITER: the migration reaches the server as
-- one multi-statement text, and the server's parser reads BEGIN ... END as
-- one statement. `DO 0` keeps the text from being empty where the comment
-- is skipped.
/*M!100104 CREATE OR REPLACE TRIGGER usage_on_slots AFTER UPDATE ON slots FOR EACH ROW
BEGIN
  IF NEW.lease_gen <> OLD.lease_gen OR (OLD.holder IS NOT NULL AND NEW.holder IS NULL) THEN
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
  END IF;
END */;
DO 0;
