//! Slot vocabulary and the pure seat rules the backends share: the states a
//! slot row moves through, how a feature grows or shrinks to a new seat
//! count ([`plan_resize`]), and how feature rows sum into the per-name view
//! clients see ([`usage_by_name`]). No I/O: the backends read rows, call these
//! and write what they answer.

use chrono::{DateTime, Utc};

use super::seats::FeatureUsage;

/// The state of a slot row, stored as a small integer (0, 1, 2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum SlotState {
    /// Counts toward the feature's seats; grantable when free or expired.
    Active,
    /// Held, but the license shrank: released or expired, it becomes retired.
    Retiring,
    /// No longer a seat; reused first when the feature grows again.
    Retired,
}

impl SlotState {
    /// The value stored in the `state` column.
    pub fn stored(self) -> i64 {
        match self {
            SlotState::Active => 0,
            SlotState::Retiring => 1,
            SlotState::Retired => 2,
        }
    }

    /// The state a stored value names; None for a value no code writes.
    pub fn from_stored(v: i64) -> Option<SlotState> {
        match v {
            0 => Some(SlotState::Active),
            1 => Some(SlotState::Retiring),
            2 => Some(SlotState::Retired),
            _ => None,
        }
    }

    /// Whether a lease on a slot in this state can still be live (active or
    /// retiring; a retired slot holds nothing).
    pub fn can_hold(self) -> bool {
        matches!(self, SlotState::Active | SlotState::Retiring)
    }
}

/// One feature row (one feature of one license) with its slot counts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FeatureRow {
    pub id: i64,
    pub license_id: String,
    pub name: String,
    pub seats: i64,
    pub version: Option<String>,
    pub not_before: Option<DateTime<Utc>>,
    pub expires_at: Option<DateTime<Utc>>,
    /// License window open right now (database clock).
    pub valid: bool,
    pub active_slots: i64,
    pub active_free: i64,
    pub retiring_live: i64,
    pub used: i64,
}

/// Sums feature rows into the per-name view operators and clients see.
pub fn usage_by_name(rows: &[FeatureRow]) -> Vec<FeatureUsage> {
    let mut out: Vec<FeatureUsage> = Vec::new();
    for r in rows {
        let (total, free) = if r.valid {
            (r.active_slots, (r.active_free - r.retiring_live).max(0))
        } else {
            (0, 0)
        };
        match out.iter_mut().find(|u| u.name == r.name) {
            Some(u) => {
                u.total += total;
                u.used += r.used;
                u.free += free;
            }
            None => out.push(FeatureUsage {
                name: r.name.clone(),
                total,
                used: r.used,
                free,
            }),
        }
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out
}

/// A slot as seen by the resize planner.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SlotView {
    pub slot_no: i64,
    pub state: SlotState,
    pub live: bool,
}

/// What a resize does: state changes (slot, from, to) and new slot numbers.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ResizePlan {
    pub changes: Vec<(i64, SlotState, SlotState)>,
    pub inserts: Vec<i64>,
}

/// Plans growing or shrinking a feature to `target` active slots.
///
/// Growing takes back retiring slots first (their leases stay), then reuses
/// retired ones, then adds new slot numbers. Shrinking retires free slots
/// first; only when too few are free does it mark held slots retiring — their
/// leases stay valid until released or expired, and grants swap them against
/// free slots so the live count converges to the new size without any lease
/// being revoked.
pub fn plan_resize(slots: &[SlotView], target: i64) -> ResizePlan {
    use SlotState::{Active, Retired, Retiring};
    let mut plan = ResizePlan::default();
    let active = slots.iter().filter(|s| s.state == Active).count() as i64;
    // Retiring slots whose lease ended are retired in any case.
    let mut reusable: Vec<SlotView> = Vec::new();
    for s in slots {
        if (s.state == Retiring && !s.live) || s.state == Retired {
            reusable.push(*s);
        }
    }
    reusable.sort_by_key(|s| s.slot_no);
    if target > active {
        let mut need = target - active;
        for s in slots.iter().filter(|s| s.state == Retiring && s.live) {
            if need == 0 {
                break;
            }
            plan.changes.push((s.slot_no, Retiring, Active));
            need -= 1;
        }
        let mut reused = Vec::new();
        for s in &reusable {
            if need == 0 {
                break;
            }
            plan.changes.push((s.slot_no, s.state, Active));
            reused.push(s.slot_no);
            need -= 1;
        }
        let next = slots.iter().map(|s| s.slot_no + 1).max().unwrap_or(0);
        plan.inserts.extend(next..next + need);
        reusable.retain(|s| !reused.contains(&s.slot_no));
    } else if target < active {
        let mut excess = active - target;
        let mut candidates: Vec<&SlotView> = slots.iter().filter(|s| s.state == Active).collect();
        // Free slots first, highest numbers first.
        candidates.sort_by_key(|s| (s.live, std::cmp::Reverse(s.slot_no)));
        for s in candidates {
            if excess == 0 {
                break;
            }
            let to = if s.live { Retiring } else { Retired };
            plan.changes.push((s.slot_no, Active, to));
            excess -= 1;
        }
    }
    for s in reusable.iter().filter(|s| s.state == Retiring) {
        plan.changes.push((s.slot_no, Retiring, Retired));
    }
    plan
}

#[cfg(test)]
mod tests {
    use super::*;
    use SlotState::{Active, Retired, Retiring};

    fn v(slot_no: i64, state: i64, live: bool) -> SlotView {
        SlotView {
            slot_no,
            state: SlotState::from_stored(state).unwrap(),
            live,
        }
    }

    #[test]
    fn grow_from_nothing_inserts() {
        let p = plan_resize(&[], 3);
        assert_eq!(p.inserts, vec![0, 1, 2]);
        assert!(p.changes.is_empty());
    }

    #[test]
    fn shrink_retires_free_slots_first() {
        let slots = [v(0, 0, true), v(1, 0, false), v(2, 0, true), v(3, 0, false)];
        let p = plan_resize(&slots, 2);
        assert_eq!(p.changes, vec![(3, Active, Retired), (1, Active, Retired)]);
        let p = plan_resize(&slots, 1);
        assert_eq!(
            p.changes,
            vec![
                (3, Active, Retired),
                (1, Active, Retired),
                (2, Active, Retiring)
            ]
        );
    }

    #[test]
    fn grow_takes_back_retiring_then_retired_then_new() {
        let slots = [v(0, 0, true), v(1, 1, true), v(2, 2, false), v(3, 1, false)];
        let p = plan_resize(&slots, 5);
        assert_eq!(
            p.changes,
            vec![
                (1, Retiring, Active),
                (2, Retired, Active),
                (3, Retiring, Active)
            ]
        );
        assert_eq!(p.inserts, vec![4]);
        let p = plan_resize(&slots, 1);
        assert_eq!(p.changes, vec![(3, Retiring, Retired)]);
    }

    #[test]
    fn stored_states_round_trip() {
        for s in [Active, Retiring, Retired] {
            assert_eq!(SlotState::from_stored(s.stored()), Some(s));
        }
        assert_eq!(SlotState::from_stored(3), None);
    }

    #[test]
    fn usage_subtracts_retiring_debt() {
        let row = FeatureRow {
            id: 1,
            license_id: "L".into(),
            name: "f".into(),
            seats: 2,
            version: None,
            not_before: None,
            expires_at: None,
            valid: true,
            active_slots: 2,
            active_free: 1,
            retiring_live: 2,
            used: 3,
        };
        let u = usage_by_name(&[row]);
        assert_eq!(u[0].free, 0);
        assert_eq!(u[0].total, 2);
        assert_eq!(u[0].used, 3);
    }
}
