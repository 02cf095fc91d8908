//! What a database node says about its place in a cluster (Galera, MySQL
//! Group Replication), and whether floatlm may write through it: the
//! decision on the values a backend reads (mysql/mod.rs reads them on every
//! new connection and every probe), kept apart so it is tested without a
//! cluster of each kind.

/// What a server says about its place in a cluster, read on every new
/// connection and by every probe of a multi-host `database_url`.
#[derive(Debug, Clone, PartialEq)]
pub enum Membership {
    /// No cluster: a single server, or a replica behind a proxy.
    Plain,
    /// A Galera node: `wsrep_ready`, `wsrep_local_state` (4 is Synced).
    Galera { ready: bool, state: i64 },
    /// A MySQL Group Replication member (the plugin is active): its
    /// `MEMBER_STATE` and `MEMBER_ROLE` (None when it is not in the group),
    /// `super_read_only`, and whether the group runs in single-primary mode.
    GroupReplication {
        member_state: Option<String>,
        role: Option<String>,
        super_read_only: bool,
        single_primary: bool,
    },
}

impl Membership {
    /// Whether floatlm may write through this node; Err says why not.
    pub fn writable(&self) -> std::result::Result<(), String> {
        match self {
            Membership::Plain | Membership::Galera { ready: true, state: 4 } => Ok(()),
            Membership::Galera { ready, state } => Err(format!(
                "this Galera node cannot take writes now (wsrep_ready {}, wsrep_local_state {state}; 4 is Synced)",
                if *ready { "ON" } else { "OFF" }
            )),
            Membership::GroupReplication {
                member_state,
                role,
                super_read_only,
                ..
            } => {
                let state = member_state.as_deref().unwrap_or("not in the group");
                if !state.eq_ignore_ascii_case("ONLINE") {
                    return Err(format!(
                        "this Group Replication member cannot take writes now (member state {state}; it must be ONLINE)"
                    ));
                }
                if *super_read_only || role.as_deref().is_some_and(|r| r.eq_ignore_ascii_case("SECONDARY")) {
                    return Err(format!(
                        "this Group Replication member is read-only (role {}, super_read_only {}): list the group's members in database_url (floatlm writes through the PRIMARY) or connect through MySQL Router's read-write port",
                        role.as_deref().unwrap_or("unknown"),
                        if *super_read_only { "ON" } else { "OFF" }
                    ));
                }
                Ok(())
            }
        }
    }

    /// The session setting that makes a lease check through this node see
    /// every commit made through another member before it (causal reads).
    pub fn session_setting(&self) -> Option<&'static str> {
        match self {
            Membership::Plain => None,
            Membership::Galera { .. } => Some("SET SESSION wsrep_sync_wait = 1"),
            // Multi-primary: any member may have written the row.
            Membership::GroupReplication {
                single_primary: false,
                ..
            } => Some("SET SESSION group_replication_consistency = 'BEFORE'"),
            // Single primary: every write goes through the primary; after a
            // failover the new one must apply its backlog before answering.
            Membership::GroupReplication { .. } => {
                Some("SET SESSION group_replication_consistency = 'BEFORE_ON_PRIMARY_FAILOVER'")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gr(state: Option<&str>, role: Option<&str>, read_only: bool, single: bool) -> Membership {
        Membership::GroupReplication {
            member_state: state.map(str::to_string),
            role: role.map(str::to_string),
            super_read_only: read_only,
            single_primary: single,
        }
    }

    #[test]
    fn a_group_replication_member_takes_writes_only_online_and_writable() {
        // Single-primary mode: the PRIMARY writes, a SECONDARY is read-only.
        assert_eq!(
            gr(Some("ONLINE"), Some("PRIMARY"), false, true).writable(),
            Ok(())
        );
        let e = gr(Some("ONLINE"), Some("SECONDARY"), true, true)
            .writable()
            .unwrap_err();
        assert!(
            e.contains("read-only") && e.contains("SECONDARY") && e.contains("PRIMARY"),
            "{e}"
        );
        // super_read_only alone (MySQL 5.7 has no MEMBER_ROLE) refuses too.
        assert!(gr(Some("ONLINE"), None, true, true).writable().is_err());
        // Multi-primary: every ONLINE member writes.
        assert_eq!(
            gr(Some("ONLINE"), Some("PRIMARY"), false, false).writable(),
            Ok(())
        );
        for state in ["RECOVERING", "OFFLINE", "ERROR", "UNREACHABLE"] {
            let e = gr(Some(state), Some("PRIMARY"), false, true)
                .writable()
                .unwrap_err();
            assert!(e.contains(state) && e.contains("ONLINE"), "{e}");
        }
        let e = gr(None, None, false, true).writable().unwrap_err();
        assert!(e.contains("not in the group"), "{e}");
    }

    #[test]
    fn each_kind_of_node_gets_its_causal_read_setting() {
        assert_eq!(Membership::Plain.session_setting(), None);
        assert_eq!(Membership::Plain.writable(), Ok(()));
        let synced = Membership::Galera {
            ready: true,
            state: 4,
        };
        assert_eq!(synced.writable(), Ok(()));
        assert_eq!(
            synced.session_setting(),
            Some("SET SESSION wsrep_sync_wait = 1")
        );
        let donor = Membership::Galera {
            ready: true,
            state: 2,
        };
        assert!(donor
            .writable()
            .unwrap_err()
            .contains("wsrep_local_state 2"));
        assert!(gr(Some("ONLINE"), Some("PRIMARY"), false, false)
            .session_setting()
            .unwrap()
            .ends_with("'BEFORE'"));
        assert!(gr(Some("ONLINE"), Some("PRIMARY"), false, true)
            .session_setting()
            .unwrap()
            .ends_with("'BEFORE_ON_PRIMARY_FAILOVER'"));
    }
}
