//! The promise checker of `tests/common/promise.rs`, tested on synthetic logs.

mod common;

use common::promise::{Answer, Op, Recorder};
use std::collections::BTreeMap;
use std::time::Duration;

// ------------------------------------------------- the checker's own tests

mod checker {
    use super::*;

    fn seats(n: &[(&str, usize)]) -> BTreeMap<String, usize> {
        n.iter().map(|(f, n)| (f.to_string(), *n)).collect()
    }

    fn login(rid: &str) -> Op {
        Op::Login {
            feature: "cad".into(),
            request_id: rid.into(),
        }
    }

    fn hb(lease: &str) -> Op {
        Op::Heartbeat {
            leases: vec![lease.into()],
        }
    }

    fn logout(lease: &str) -> Op {
        Op::Logout {
            lease: lease.into(),
        }
    }

    #[test]
    fn an_overlap_is_found_with_its_instant_and_leases() {
        let r = Recorder::new();
        r.log_ms(
            "C",
            login("C:1"),
            0,
            Some(10),
            Answer::granted("1.0.1", "cad", 5000, false),
        );
        r.log_ms(
            "D",
            login("D:1"),
            1000,
            Some(1010),
            Answer::granted("1.1.1", "cad", 5000, false),
        );
        let e = r.check(&seats(&[("cad", 1)])).unwrap_err();
        assert_eq!(e.violations.len(), 1, "{e}");
        let v = &e.violations[0];
        assert_eq!(v.feature, "cad");
        assert_eq!(v.at, Duration::from_millis(1000));
        assert_eq!(v.leases, vec!["1.0.1".to_string(), "1.1.1".to_string()]);
        assert!(
            e.report.contains("t=+1.000s") && e.report.contains("#1 D login"),
            "{e}"
        );
        // Two seats: fine, and two at once is the peak.
        assert_eq!(r.check(&seats(&[("cad", 2)])).unwrap()["cad"], 2);
    }

    #[test]
    fn promises_of_one_lease_count_once_and_ends_come_before_starts() {
        let r = Recorder::new();
        r.log_ms(
            "C",
            login("C:1"),
            0,
            Some(10),
            Answer::granted("1.0.1", "cad", 1000, false),
        );
        r.log_ms(
            "C",
            hb("1.0.1"),
            500,
            Some(510),
            Answer::heartbeat(&[("1.0.1", true, 500)]),
        );
        // Starts exactly when C's last promise ends.
        r.log_ms(
            "D",
            login("D:1"),
            1000,
            Some(1010),
            Answer::granted("1.1.1", "cad", 5000, false),
        );
        assert_eq!(r.check(&seats(&[("cad", 1)])).unwrap()["cad"], 1);
    }

    #[test]
    fn a_logout_cuts_the_promises_sent_before_it() {
        let r = Recorder::new();
        r.log_ms(
            "C",
            login("C:1"),
            0,
            Some(10),
            Answer::granted("1.0.1", "cad", 5000, false),
        );
        r.log_ms(
            "C",
            hb("1.0.1"),
            900,
            Some(910),
            Answer::heartbeat(&[("1.0.1", true, 5000)]),
        );
        r.log_ms(
            "C",
            logout("1.0.1"),
            1000,
            Some(1010),
            Answer::released("1.0.1", true),
        );
        r.log_ms(
            "D",
            login("D:1"),
            1005,
            Some(1020),
            Answer::granted("1.1.1", "cad", 5000, false),
        );
        assert_eq!(r.check(&seats(&[("cad", 1)])).unwrap()["cad"], 1);
    }

    #[test]
    fn an_answer_to_a_request_sent_during_an_outstanding_logout_does_not_count() {
        let r = Recorder::new();
        r.log_ms(
            "C",
            login("C:1"),
            0,
            Some(10),
            Answer::granted("1.0.1", "cad", 5000, false),
        );
        r.log_ms(
            "C",
            logout("1.0.1"),
            1000,
            Some(1200),
            Answer::released("1.0.1", true),
        );
        r.log_ms(
            "C",
            hb("1.0.1"),
            1100,
            Some(1300),
            Answer::heartbeat(&[("1.0.1", true, 5000)]),
        );
        r.log_ms(
            "D",
            login("D:1"),
            1150,
            Some(1160),
            Answer::granted("1.1.1", "cad", 5000, false),
        );
        assert_eq!(r.check(&seats(&[("cad", 1)])).unwrap()["cad"], 1);
    }

    #[test]
    fn a_heartbeat_sent_after_the_logout_was_answered_counts_if_alive() {
        let r = Recorder::new();
        r.log_ms(
            "C",
            login("C:1"),
            0,
            Some(10),
            Answer::granted("1.0.1", "cad", 5000, false),
        );
        r.log_ms(
            "C",
            logout("1.0.1"),
            1000,
            Some(1010),
            Answer::released("1.0.1", true),
        );
        r.log_ms(
            "D",
            login("D:1"),
            1100,
            Some(1110),
            Answer::granted("1.1.1", "cad", 5000, false),
        );
        r.log_ms(
            "C",
            hb("1.0.1"),
            1200,
            Some(1210),
            Answer::heartbeat(&[("1.0.1", true, 5000)]),
        );
        let e = r.check(&seats(&[("cad", 1)])).unwrap_err();
        assert_eq!(e.violations[0].at, Duration::from_millis(1200), "{e}");
        assert!(e.report.contains("C heartbeat [1.0.1]"), "{e}");
        // The same heartbeat answered dead is fine.
        let r2 = Recorder::new();
        r2.log_ms(
            "C",
            login("C:1"),
            0,
            Some(10),
            Answer::granted("1.0.1", "cad", 5000, false),
        );
        r2.log_ms(
            "C",
            logout("1.0.1"),
            1000,
            Some(1010),
            Answer::released("1.0.1", true),
        );
        r2.log_ms(
            "D",
            login("D:1"),
            1100,
            Some(1110),
            Answer::granted("1.1.1", "cad", 5000, false),
        );
        r2.log_ms(
            "C",
            hb("1.0.1"),
            1200,
            Some(1210),
            Answer::heartbeat(&[("1.0.1", false, 0)]),
        );
        assert!(r2.check(&seats(&[("cad", 1)])).is_ok());
    }

    #[test]
    fn a_replayed_grant_counts() {
        let r = Recorder::new();
        r.log_ms(
            "C",
            login("C:1"),
            0,
            Some(10),
            Answer::granted("1.0.1", "cad", 5000, false),
        );
        r.log_ms(
            "C",
            logout("1.0.1"),
            1000,
            Some(1010),
            Answer::released("1.0.1", true),
        );
        r.log_ms(
            "D",
            login("D:1"),
            1100,
            Some(1110),
            Answer::granted("1.1.1", "cad", 5000, false),
        );
        let resend = Op::LoginResend {
            feature: "cad".into(),
            request_id: "C:1".into(),
        };
        r.log_ms(
            "C",
            resend,
            1500,
            Some(1510),
            Answer::granted("1.0.1", "cad", 3000, true),
        );
        let e = r.check(&seats(&[("cad", 1)])).unwrap_err();
        assert_eq!(e.violations[0].at, Duration::from_millis(1500), "{e}");
        assert!(e.report.contains("replayed=true"), "{e}");
    }

    #[test]
    fn an_unanswered_logout_gives_the_lease_up_for_good() {
        let r = Recorder::new();
        r.log_ms(
            "C",
            login("C:1"),
            0,
            Some(10),
            Answer::granted("1.0.1", "cad", 5000, false),
        );
        r.log_ms(
            "C",
            logout("1.0.1"),
            1000,
            None,
            Answer::None("timed out".into()),
        );
        r.log_ms(
            "D",
            login("D:1"),
            1100,
            Some(1110),
            Answer::granted("1.1.1", "cad", 5000, false),
        );
        r.log_ms(
            "C",
            hb("1.0.1"),
            4000,
            Some(4010),
            Answer::heartbeat(&[("1.0.1", true, 5000)]),
        );
        assert!(r.check(&seats(&[("cad", 1)])).is_ok());
    }

    #[test]
    fn a_force_release_ends_nothing() {
        let r = Recorder::new();
        r.log_ms(
            "C",
            login("C:1"),
            0,
            Some(10),
            Answer::granted("1.0.1", "cad", 5000, false),
        );
        let fr = Op::ForceRelease {
            lease: "1.0.1".into(),
        };
        r.log_ms(
            "operator",
            fr,
            1000,
            Some(1010),
            Answer::Http(200, "{}".into()),
        );
        r.log_ms(
            "D",
            login("D:1"),
            1100,
            Some(1110),
            Answer::granted("1.1.1", "cad", 5000, false),
        );
        let e = r.check(&seats(&[("cad", 1)])).unwrap_err();
        assert!(e.report.contains("force-release 1.0.1"), "{e}");
    }

    #[test]
    fn alive_for_a_lease_never_granted_is_a_failure() {
        let r = Recorder::new();
        r.log_ms(
            "C",
            hb("9.9.9"),
            0,
            Some(10),
            Answer::heartbeat(&[("9.9.9", true, 5000)]),
        );
        let e = r.check(&seats(&[("cad", 1)])).unwrap_err();
        assert_eq!(e.anomalies.len(), 1, "{e}");
        assert!(e.report.contains("no answer ever granted 9.9.9"), "{e}");
    }

    #[test]
    fn features_are_checked_apart_and_unanswered_grants_promise_nothing() {
        let r = Recorder::new();
        r.log_ms(
            "C",
            login("C:1"),
            0,
            Some(10),
            Answer::granted("1.0.1", "cad", 5000, false),
        );
        let sim = Op::Login {
            feature: "sim".into(),
            request_id: "D:1".into(),
        };
        r.log_ms(
            "D",
            sim,
            100,
            Some(110),
            Answer::granted("2.0.1", "sim", 5000, false),
        );
        r.log_ms(
            "E",
            login("E:1"),
            200,
            None,
            Answer::None("timed out".into()),
        );
        let max = r.check(&seats(&[("cad", 1), ("sim", 1)])).unwrap();
        assert_eq!((max["cad"], max["sim"]), (1, 1));
    }
}
