//! How `floatlm admin …` shows the admin API's answers to a person (tables
//! and lines; `--json` prints the answer itself).

use super::*;

fn table(rows: &[Vec<String>]) {
    let cols = rows.first().map(|r| r.len()).unwrap_or(0);
    let widths: Vec<usize> = (0..cols)
        .map(|c| rows.iter().map(|r| r[c].chars().count()).max().unwrap_or(0))
        .collect();
    for r in rows {
        let line: Vec<String> = r
            .iter()
            .zip(&widths)
            .map(|(v, w)| format!("{v:<w$}"))
            .collect();
        println!("{}", line.join("  ").trim_end());
    }
}

/// A value for the terminal: control and bidirectional formatting
/// characters (in names a client reported before they were refused) shown
/// as U+FFFD, never interpreted.
fn s(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(s) => s
            .chars()
            .map(|c| {
                if floatlm_protocol::messages::limits::is_unsafe(c) {
                    '\u{FFFD}'
                } else {
                    c
                }
            })
            .collect(),
        other => other.to_string(),
    }
}

pub(super) fn print_human(cmd: &AdminCommand, v: &Value) {
    let empty = vec![];
    match cmd {
        AdminCommand::Apply { .. }
        | AdminCommand::License {
            command: LicenseCmd::Apply { .. },
        } => {
            println!(
                "license {} serial {}: {}",
                s(&v["license_id"]),
                s(&v["serial"]),
                s(&v["result"]["outcome"])
            );
        }
        AdminCommand::License {
            command: LicenseCmd::List,
        } => {
            let mut rows = vec![vec![
                "LICENSE".into(),
                "SERIAL".into(),
                "CUSTOMER".into(),
                "FEATURES".into(),
                "STATUS".into(),
            ]];
            for l in v["licenses"].as_array().unwrap_or(&empty) {
                let feats: Vec<String> = l["features"]
                    .as_array()
                    .unwrap_or(&empty)
                    .iter()
                    .map(|f| format!("{}:{}", s(&f["name"]), s(&f["seats"])))
                    .collect();
                rows.push(vec![
                    s(&l["license_id"]),
                    s(&l["serial"]),
                    s(&l["customer"]),
                    feats.join(","),
                    s(&l["status"]),
                ]);
            }
            table(&rows);
        }
        AdminCommand::Features => {
            let mut rows = vec![vec![
                "FEATURE".into(),
                "TOTAL".into(),
                "USED".into(),
                "FREE".into(),
                "NOTE".into(),
            ]];
            for f in v["features"].as_array().unwrap_or(&empty) {
                let note = f["refused"]
                    .as_str()
                    .map(|r| format!("REFUSED: {r}"))
                    .unwrap_or_default();
                rows.push(vec![
                    s(&f["name"]),
                    s(&f["total"]),
                    s(&f["used"]),
                    s(&f["free"]),
                    note,
                ]);
            }
            table(&rows);
        }
        AdminCommand::Lease {
            command: LeaseCmd::List,
        } => {
            let mut rows = vec![vec![
                "LEASE".into(),
                "FEATURE".into(),
                "HOLDER".into(),
                "CLIENT".into(),
                "BY".into(),
                "EXPIRES".into(),
            ]];
            for l in v["leases"].as_array().unwrap_or(&empty) {
                let holder = if l["revoked"].as_bool() == Some(true) {
                    "(nobody: revoked or quarantined)".to_string()
                } else {
                    s(&l["holder"])
                };
                rows.push(vec![
                    s(&l["lease"]),
                    s(&l["feature"]),
                    holder,
                    s(&l["client_info"]),
                    s(&l["granted_by"]),
                    s(&l["expires_at"]),
                ]);
            }
            table(&rows);
        }
        AdminCommand::Identity {
            command: IdentityCmd::Create { .. },
        } => {
            println!(
                "identity {} created. Its identity string (shown only now):",
                s(&v["identity"]["id"])
            );
            println!("{}", s(&v["identity_string"]));
        }
        AdminCommand::Identity {
            command: IdentityCmd::List,
        } => {
            let mut rows = vec![vec![
                "ID".into(),
                "NAME".into(),
                "CREATED".into(),
                "EXPIRES".into(),
                "REVOKED".into(),
                "STATUS".into(),
            ]];
            for i in v["identities"].as_array().unwrap_or(&empty) {
                rows.push(vec![
                    s(&i["id"]),
                    s(&i["name"]),
                    s(&i["created_at"]),
                    s(&i["expires_at"]),
                    s(&i["revoked_at"]),
                    s(&i["status"]),
                ]);
            }
            table(&rows);
        }
        AdminCommand::Token {
            command: TokenCmd::Create { .. },
        } => {
            println!(
                "token {} ({}) created. The token (shown only now):",
                s(&v["token"]["id"]),
                s(&v["token"]["role"])
            );
            println!("{}", s(&v["secret"]));
        }
        AdminCommand::Token {
            command: TokenCmd::List,
        } => {
            let mut rows = vec![vec![
                "ID".into(),
                "NAME".into(),
                "ROLE".into(),
                "CREATED".into(),
                "REVOKED".into(),
            ]];
            for t in v["tokens"].as_array().unwrap_or(&empty) {
                rows.push(vec![
                    s(&t["id"]),
                    s(&t["name"]),
                    s(&t["role"]),
                    s(&t["created_at"]),
                    s(&t["revoked_at"]),
                ]);
            }
            table(&rows);
        }
        AdminCommand::Cluster {
            command: ClusterCmd::Status,
        } => {
            let mut rows = vec![vec![
                "INSTANCE".into(),
                "STATE".into(),
                "ADDRESS".into(),
                "ADMIN".into(),
                "LEASES".into(),
                "SEEN".into(),
                "VERSION".into(),
            ]];
            for i in v["instances"].as_array().unwrap_or(&empty) {
                let seen = format!("{:.1}s ago", i["silent_for_s"].as_f64().unwrap_or(0.0));
                rows.push(vec![
                    s(&i["id"]),
                    s(&i["state"]),
                    s(&i["address"]),
                    s(&i["admin_address"]),
                    s(&i["leases"]),
                    seen,
                    s(&i["version"]),
                ]);
            }
            table(&rows);
        }
        AdminCommand::Lease {
            command: LeaseCmd::Release { .. },
        } => {
            println!(
                "lease {} released: its holder loses it at its next heartbeat; the seat is free again at {} \
                 (once every promise already given for it has run out)",
                s(&v["released"]),
                s(&v["seat_free_at"])
            );
        }
        AdminCommand::Identity {
            command: IdentityCmd::Revoke { .. },
        } => {
            let leases = v["leases_ended"].as_u64().unwrap_or(0);
            println!(
                "identity {} revoked: refused at once on this instance ({} session(s) ended), on every other \
                 instance within one cluster heartbeat",
                s(&v["revoked"]),
                s(&v["sessions_ended"])
            );
            if leases > 0 {
                println!(
                    "{leases} lease(s) ended: their holders lose them at their next heartbeat; the last seat is \
                     free again at {} (once every promise already given has run out)",
                    s(&v["seats_free_at"])
                );
            }
        }
        AdminCommand::Quarantine { .. } => {
            println!(
                "quarantine: every lease ended and all {} seat(s) held by nobody until {}; \
                 clients log in again and get seats from then on",
                s(&v["slots_held"]),
                s(&v["seats_free_at"])
            );
        }
        AdminCommand::Verify => {
            let refused = v["refused"].as_object().cloned().unwrap_or_default();
            if refused.is_empty() {
                println!(
                    "integrity ok: {} license(s) checked",
                    s(&v["licenses_checked"])
                );
            } else {
                for (f, why) in refused {
                    println!("REFUSED {f}: {}", s(&why));
                }
            }
        }
        AdminCommand::Backup {
            command: BackupCmd::Create { .. },
        } => {
            println!(
                "backup written to {} ({} bytes, mode 0600); check it with `floatlm backup verify {}`",
                s(&v["file"]),
                s(&v["bytes"]),
                s(&v["file"])
            );
        }
        AdminCommand::Backup {
            command: BackupCmd::List,
        } => {
            let every = v["interval_s"]
                .as_f64()
                .map_or("off".to_string(), |i| format!("every {i}s"));
            println!(
                "scheduled backups on this instance: {every}, keep {}, into {}",
                s(&v["keep"]),
                s(&v["dir"])
            );
            let mut rows = vec![vec![
                "SLOT".into(),
                "INSTANCE".into(),
                "CLAIMED".into(),
                "OUTCOME".into(),
                "FILE".into(),
                "BYTES".into(),
                "ERROR".into(),
            ]];
            for c in v["claims"].as_array().unwrap_or(&empty) {
                let outcome = c["outcome"]
                    .as_str()
                    .unwrap_or("running (or its instance stopped)");
                rows.push(vec![
                    s(&c["slot"]),
                    s(&c["instance_id"]),
                    s(&c["claimed_at"]),
                    outcome.to_string(),
                    s(&c["file"]),
                    s(&c["bytes"]),
                    s(&c["error"]),
                ]);
            }
            table(&rows);
            println!("files in this instance's backup_dir:");
            for f in v["files"].as_array().unwrap_or(&empty) {
                println!("  {}  {} bytes", s(&f["name"]), s(&f["bytes"]));
            }
        }
        _ => println!("{}", serde_json::to_string_pretty(v).unwrap_or_default()),
    }
}
