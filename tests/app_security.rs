//! Sealing, tampering, keys and licenses, through the App on both backends.

use floatlm::app::SeatFailure;
use floatlm::app::{App, AppError, StartError};
use floatlm::domain::license::{LicenseError, VendorSigningKey};
use floatlm::domain::seats::{GrantRequest, RequestId, SeatError};
use floatlm::storage::ApplyOutcome;
use std::time::Duration;
use testkit::{
    def, layers, raw_exec, sealed_blob, set_sealed_blob, Kind, SealedColumn, TestApp, TestDb,
    MASTER_KEY_1, MASTER_KEY_2,
};

fn req(feature: &str, rid: &str) -> GrantRequest {
    GrantRequest {
        feature: feature.into(),
        request_id: RequestId::new(rid).unwrap(),
        holder: "h".into(),
        client_info: String::new(),
        hold: Duration::from_secs(30),
        promise: Duration::from_secs(30),
        instance_id: "i".into(),
    }
}

async fn apply(t: &TestApp, license_id: &str, serial: u64, feature: &str, seats: u32) {
    let text = t
        .vendor
        .sign(&def(license_id, serial, feature, seats))
        .unwrap();
    t.app.licenses().apply_license(&text).await.unwrap();
}

/// Flips one bit in the middle of license `license_id`'s sealed blob, as
/// someone with write access to the database could.
async fn flip_a_byte_of_the_stored_license(t: &TestApp, license_id: &str) {
    let mut blob = sealed_blob(&t.db_url(), SealedColumn::License, license_id).await;
    let mid = blob.len() / 2;
    blob[mid] ^= 0x20;
    set_sealed_blob(&t.db_url(), SealedColumn::License, license_id, &blob).await;
}

async fn flipped_byte_in_a_stored_license_is_refused(kind: Kind) {
    let t = TestApp::new(kind).await;
    apply(&t, "L1", 1, "cad", 3).await;
    t.app.seats().grant(&req("cad", "a")).await.unwrap();
    flip_a_byte_of_the_stored_license(&t, "L1").await;

    let report = t.app.licenses().verify_integrity().await.unwrap();
    let why = report.refused.get("cad").expect("feature refused");
    assert!(why.contains("tampered"), "{why}");
    let e = t.app.seats().grant(&req("cad", "b")).await.unwrap_err();
    assert!(
        matches!(e, SeatFailure::Refused(SeatError::Refused(..))),
        "{e}"
    );
    assert!(e.to_string().contains("integrity"), "{e}");
    let lic = t.app.licenses().licenses().await.unwrap();
    assert!(lic[0].status.contains("refused"), "{}", lic[0].status);
    let f = t.app.licenses().features().await.unwrap();
    assert!(f[0].refused.is_some());
}

/// The repair path of `apply_license`: the same file applied again over a
/// row whose sealed blob was damaged is a repair (`Repaired`, not
/// `Unchanged`), lifts the refusal, keeps the lease held before the damage,
/// and the feature grants again.
async fn reapplying_the_license_repairs_a_flipped_byte(kind: Kind) {
    let t = TestApp::new(kind).await;
    let text = t.vendor.sign(&def("L1", 1, "cad", 3)).unwrap();
    t.app.licenses().apply_license(&text).await.unwrap();
    t.app.seats().grant(&req("cad", "a")).await.unwrap();
    flip_a_byte_of_the_stored_license(&t, "L1").await;
    let report = t.app.licenses().verify_integrity().await.unwrap();
    assert!(report.refused.contains_key("cad"), "{report:?}");
    assert!(
        matches!(
            t.app.seats().grant(&req("cad", "b")).await,
            Err(SeatFailure::Refused(SeatError::Refused(..)))
        ),
        "a grant of a refused feature"
    );

    let (outcome, _) = t.app.licenses().apply_license(&text).await.unwrap();
    assert!(
        matches!(outcome, ApplyOutcome::Repaired),
        "re-applying the same file over a damaged row must repair it, not {outcome:?}"
    );
    let report = t.app.licenses().verify_integrity().await.unwrap();
    assert!(
        report.refused.is_empty(),
        "the repair must lift the refusal: {report:?}"
    );
    let lic = t.app.licenses().licenses().await.unwrap();
    assert_eq!(lic[0].status, "ok");
    let f = t.app.licenses().features().await.unwrap();
    assert!(f[0].refused.is_none(), "{:?}", f[0].refused);
    t.app
        .seats()
        .grant(&req("cad", "c"))
        .await
        .unwrap_or_else(|e| panic!("after the repair cad must grant again: {e}"));
    let f = t.app.licenses().features().await.unwrap();
    assert_eq!(
        (f[0].usage.total, f[0].usage.used, f[0].usage.free),
        (3, 2, 1),
        "the lease granted before the damage and the one after"
    );
}

async fn a_blob_moved_to_another_row_does_not_open(kind: Kind) {
    let t = TestApp::new(kind).await;
    apply(&t, "L1", 1, "cad", 1).await;
    apply(&t, "L2", 1, "cam", 1).await;
    let b1 = sealed_blob(&t.db_url(), SealedColumn::License, "L1").await;
    set_sealed_blob(&t.db_url(), SealedColumn::License, "L2", &b1).await;
    let report = t.app.licenses().verify_integrity().await.unwrap();
    assert!(
        report
            .refused
            .get("cam")
            .is_some_and(|w| w.contains("moved from another row")),
        "{report:?}"
    );
    assert!(
        !report.refused.contains_key("cad"),
        "the untouched license still serves"
    );
    t.app.seats().grant(&req("cad", "x")).await.unwrap();
}

async fn edited_seat_rows_are_refused_and_repaired_by_reapplying(kind: Kind) {
    let t = TestApp::new(kind).await;
    let text = t.vendor.sign(&def("L1", 1, "cad", 2)).unwrap();
    t.app.licenses().apply_license(&text).await.unwrap();
    // An operator with database access adds a third seat by hand.
    let n = raw_exec(
        &t,
        "INSERT INTO slots (feature_id, slot_no) SELECT id, 99 FROM features WHERE name = 'cad'",
    )
    .await;
    assert_eq!(n, 1);
    let report = t.app.licenses().verify_integrity().await.unwrap();
    assert!(
        report
            .refused
            .get("cad")
            .is_some_and(|w| w.contains("3 active slots")),
        "{report:?}"
    );
    assert!(matches!(
        t.app.seats().grant(&req("cad", "a")).await,
        Err(SeatFailure::Refused(SeatError::Refused(..)))
    ));
    // Editing the seats column is caught the same way.
    t.app.licenses().apply_license(&text).await.unwrap();
    assert!(t
        .app
        .licenses()
        .verify_integrity()
        .await
        .unwrap()
        .refused
        .is_empty());
    raw_exec(&t, "UPDATE features SET seats = 50 WHERE name = 'cad'").await;
    assert!(t
        .app
        .licenses()
        .verify_integrity()
        .await
        .unwrap()
        .refused
        .contains_key("cad"));
    t.app.licenses().apply_license(&text).await.unwrap();
    assert!(t
        .app
        .licenses()
        .verify_integrity()
        .await
        .unwrap()
        .refused
        .is_empty());
    let f = t.app.licenses().features().await.unwrap();
    assert_eq!((f[0].usage.total, f[0].usage.free), (2, 2));
}

async fn bad_licenses_change_nothing(kind: Kind) {
    let t = TestApp::new(kind).await;
    let good = t.vendor.sign(&def("L1", 1, "cad", 2)).unwrap();
    // Wrong signature: payload altered after signing.
    let mut file: serde_json::Value = serde_json::from_str(&good).unwrap();
    let other = t.vendor.sign(&def("L1", 1, "cad", 200)).unwrap();
    let other: serde_json::Value = serde_json::from_str(&other).unwrap();
    file["payload"] = other["payload"].clone();
    file["signature"] =
        serde_json::from_str::<serde_json::Value>(&good).unwrap()["signature"].clone();
    let e = t
        .app
        .licenses()
        .apply_license(&file.to_string())
        .await
        .unwrap_err();
    assert!(
        matches!(e, AppError::License(LicenseError::BadSignature(_))),
        "{e}"
    );
    // Unknown vendor key.
    let stranger = VendorSigningKey::generate()
        .sign(&def("L1", 1, "cad", 2))
        .unwrap();
    let e = t.app.licenses().apply_license(&stranger).await.unwrap_err();
    assert!(
        matches!(e, AppError::License(LicenseError::UnknownKey(_))),
        "{e}"
    );
    assert!(e.to_string().contains("does not trust"));
    // Expired.
    let mut d = def("L1", 1, "cad", 2);
    d.features[0].expires = Some("2021-06-01T00:00:00Z".parse().unwrap());
    let e = t
        .app
        .licenses()
        .apply_license(&t.vendor.sign(&d).unwrap())
        .await
        .unwrap_err();
    assert!(
        matches!(e, AppError::License(LicenseError::Expired(_))),
        "{e}"
    );
    // Malformed.
    for junk in [
        "",
        "not json",
        "{}",
        "{\"format\":\"floatlm-license-v9\",\"key_id\":\"x\",\"payload\":\"\",\"signature\":\"\"}",
    ] {
        let e = t.app.licenses().apply_license(junk).await.unwrap_err();
        assert!(matches!(e, AppError::License(_)), "{junk}: {e}");
    }
    assert!(
        t.app.licenses().licenses().await.unwrap().is_empty(),
        "nothing stored"
    );
    assert!(
        t.app.licenses().features().await.unwrap().is_empty(),
        "no seats created"
    );
    // And the good one still applies.
    t.app.licenses().apply_license(&good).await.unwrap();
    assert_eq!(t.app.licenses().features().await.unwrap()[0].usage.total, 2);
}

async fn identities_are_sealed_and_revocable(kind: Kind) {
    let t = TestApp::new(kind).await;
    let (view, ident) = t
        .app
        .access()
        .create_identity("build-farm", None)
        .await
        .unwrap();
    let s = ident.reveal();
    assert!(s.starts_with(&format!("{}:", view.id)));
    let (row, secret) = t
        .app
        .access()
        .identity_secret(&view.id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(secret.expose(), ident.secret.expose());
    assert!(
        !row.sealed
            .windows(8)
            .any(|w| ident.secret.expose().as_bytes().starts_with(w)),
        "secret stored sealed"
    );
    t.app.access().revoke_identity(&view.id).await.unwrap();
    assert!(t.app.access().revoke_identity(&view.id).await.is_err());
    assert!(t.app.access().identities().await.unwrap()[0]
        .revoked_at
        .is_some());
    assert!(t
        .app
        .access()
        .identity_secret("not-an-id")
        .await
        .unwrap()
        .is_none());
}

async fn start_with(t: &TestApp, key: &str) -> Result<std::sync::Arc<App>, StartError> {
    // Kept for the rest of the test: the App may still write to its data dir.
    let dir = tempfile::tempdir().unwrap().keep();
    let dir = dir.as_path();
    let mut l = match &t.db {
        Some(db) => layers(dir, Some(&db.url), key, &t.vendor),
        // The same SQLite file, another data dir for the rest.
        None => {
            let url = format!(
                "sqlite://{}",
                t.dir.path().join("data/floatlm.db").display()
            );
            layers(dir, Some(&url), key, &t.vendor)
        }
    };
    l.flag("log_level", Some("warn"));
    App::start(l.build().unwrap()).await
}

async fn wrong_master_key_is_refused_at_start(kind: Kind) {
    let t = TestApp::new(kind).await;
    apply(&t, "L1", 1, "cad", 1).await;
    let other_id = start_with(&t, MASTER_KEY_2).await.err().expect("refused");
    let msg = other_id.to_string();
    assert!(
        msg.contains("sealed with master key(s) k1") && msg.contains("k2"),
        "{msg}"
    );
    let same_id = start_with(&t, "k1:AgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgI=")
        .await
        .err()
        .expect("refused");
    assert!(
        same_id.to_string().contains("same id, different bytes"),
        "{same_id}"
    );
    assert!(start_with(&t, MASTER_KEY_1).await.is_ok());
}

async fn rotate_key_reseals_under_the_newest_key(kind: Kind) {
    let t = TestApp::new(kind).await;
    apply(&t, "L1", 1, "cad", 2).await;
    let (view, ident) = t.app.access().create_identity("x", None).await.unwrap();
    let both = format!("{MASTER_KEY_1},{MASTER_KEY_2}");
    let app2 = start_with(&t, &both).await.unwrap();
    let r = app2.keys().rotate_key().await.unwrap();
    // The license, the identity secret and the resumption ticket key.
    assert_eq!((r.sealing_key.as_str(), r.resealed), ("k2", 3));
    assert_eq!(
        app2.keys().rotate_key().await.unwrap().resealed,
        0,
        "rotation is idempotent"
    );
    // Now only k2 opens the database, and k1 alone is refused.
    let app3 = start_with(&t, MASTER_KEY_2).await.unwrap();
    assert_eq!(
        app3.access()
            .identity_secret(&view.id)
            .await
            .unwrap()
            .unwrap()
            .1
            .expose(),
        ident.secret.expose()
    );
    assert!(app3
        .licenses()
        .verify_integrity()
        .await
        .unwrap()
        .refused
        .is_empty());
    assert!(
        !app3.tickets().ticket_key_ids().is_empty(),
        "the ticket key opens under k2"
    );
    app3.seats()
        .grant(&req("cad", "after-rotation"))
        .await
        .unwrap();
    assert!(start_with(&t, MASTER_KEY_1).await.is_err());
}

/// Two instances on one MariaDB database: a license applied on one is
/// served by the other at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn license_applied_on_one_instance_serves_on_another() {
    let db = TestDb::new().await;
    let url = db.url.clone();
    let t1 = TestApp::on(Kind::Mysql, Some(db), VendorSigningKey::generate()).await;
    let dir2 = tempfile::tempdir().unwrap();
    let app2 = App::start(
        layers(dir2.path(), Some(&url), MASTER_KEY_1, &t1.vendor)
            .build()
            .unwrap(),
    )
    .await
    .unwrap();
    assert!(app2.licenses().features().await.unwrap().is_empty());
    apply(&t1, "L1", 1, "cad", 2).await;
    let f = app2.licenses().features().await.unwrap();
    assert_eq!((f[0].usage.name.as_str(), f[0].usage.total), ("cad", 2));
    app2.seats().grant(&req("cad", "one")).await.unwrap();
    t1.app.seats().grant(&req("cad", "two")).await.unwrap();
    assert!(matches!(
        app2.seats().grant(&req("cad", "three")).await,
        Err(SeatFailure::Refused(SeatError::NoSeat { .. }))
    ));
    assert_eq!(t1.app.licenses().licenses().await.unwrap()[0].status, "ok");
}

testkit::both_backends!(
    flipped_byte_in_a_stored_license_is_refused,
    reapplying_the_license_repairs_a_flipped_byte,
    a_blob_moved_to_another_row_does_not_open,
    edited_seat_rows_are_refused_and_repaired_by_reapplying,
    bad_licenses_change_nothing,
    identities_are_sealed_and_revocable,
    wrong_master_key_is_refused_at_start,
    rotate_key_reseals_under_the_newest_key,
);
