-- The usage trigger of 0010, guarded (see migrations/mysql/0012_usage_trigger_guard.sql):
-- the WHEN clause is the union of the three arms' conditions, so a renewal,
-- which only raises expires_at, no longer runs them.
DROP TRIGGER IF EXISTS usage_on_slots;
CREATE TRIGGER usage_on_slots AFTER UPDATE ON slots FOR EACH ROW
WHEN NEW.lease_gen <> OLD.lease_gen OR (OLD.holder IS NOT NULL AND NEW.holder IS NULL)
BEGIN
    INSERT INTO usage_events (at, event, feature, feature_id, slot_no, lease_gen, lease_nonce, identity, user, host, instance)
    SELECT OLD.expires_at, 'expiry', f.name, NEW.feature_id, NEW.slot_no, OLD.lease_gen, OLD.lease_nonce, OLD.holder,
           CASE WHEN w.u = '' THEN w.who ELSE substr(w.u, 1, length(w.u) - 1) END,
           CASE WHEN w.u = '' THEN NULL ELSE substr(w.who, length(w.u) + 1) END,
           OLD.granted_by
    FROM features f,
         (SELECT who, rtrim(who, replace(who, '@', '')) AS u
          FROM (SELECT CASE WHEN instr(OLD.client_info, ' (') > 0
                            THEN substr(OLD.client_info, 1, instr(OLD.client_info, ' (') - 1)
                            ELSE OLD.client_info END AS who)) w
    WHERE f.id = NEW.feature_id AND OLD.holder IS NOT NULL AND OLD.expires_at IS NOT NULL
      AND (NEW.lease_gen <> OLD.lease_gen
           OR (NEW.holder IS NULL AND NEW.expires_at IS NOT NULL
               AND OLD.expires_at <= CAST(unixepoch('subsec') * 1000000 AS INTEGER)));
    INSERT INTO usage_events (at, event, feature, feature_id, slot_no, lease_gen, lease_nonce, identity, user, host, instance)
    SELECT CAST(unixepoch('subsec') * 1000000 AS INTEGER),
           CASE WHEN NEW.expires_at IS NULL THEN 'release' ELSE 'force_release' END,
           f.name, NEW.feature_id, NEW.slot_no, OLD.lease_gen, OLD.lease_nonce, OLD.holder,
           CASE WHEN w.u = '' THEN w.who ELSE substr(w.u, 1, length(w.u) - 1) END,
           CASE WHEN w.u = '' THEN NULL ELSE substr(w.who, length(w.u) + 1) END,
           OLD.granted_by
    FROM features f,
         (SELECT who, rtrim(who, replace(who, '@', '')) AS u
          FROM (SELECT CASE WHEN instr(OLD.client_info, ' (') > 0
                            THEN substr(OLD.client_info, 1, instr(OLD.client_info, ' (') - 1)
                            ELSE OLD.client_info END AS who)) w
    WHERE f.id = NEW.feature_id AND OLD.holder IS NOT NULL AND NEW.holder IS NULL
      AND NEW.lease_gen = OLD.lease_gen
      AND (NEW.expires_at IS NULL OR OLD.expires_at > CAST(unixepoch('subsec') * 1000000 AS INTEGER));
    INSERT INTO usage_events (at, event, feature, feature_id, slot_no, lease_gen, lease_nonce, identity, user, host, instance)
    SELECT NEW.granted_at, 'grant', f.name, NEW.feature_id, NEW.slot_no, NEW.lease_gen, NEW.lease_nonce, NEW.holder,
           CASE WHEN w.u = '' THEN w.who ELSE substr(w.u, 1, length(w.u) - 1) END,
           CASE WHEN w.u = '' THEN NULL ELSE substr(w.who, length(w.u) + 1) END,
           NEW.granted_by
    FROM features f,
         (SELECT who, rtrim(who, replace(who, '@', '')) AS u
          FROM (SELECT CASE WHEN instr(NEW.client_info, ' (') > 0
                            THEN substr(NEW.client_info, 1, instr(NEW.client_info, ' (') - 1)
                            ELSE NEW.client_info END AS who)) w
    WHERE f.id = NEW.feature_id AND NEW.lease_gen <> OLD.lease_gen AND NEW.holder IS NOT NULL;
END;
