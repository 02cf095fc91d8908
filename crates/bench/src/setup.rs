//! What a started run needs before any load: a vendor key and the bench's
//! licenses made by the binary under test (so an older binary reads what it
//! wrote itself), the secrets every instance shares, how instances start,
//! and the license and identity applied through the first one. The full run,
//! its Galera part and the comparison (`--compare`) all start here.

use anyhow::{bail, Context};
use base64::Engine;
use std::path::{Path, PathBuf};

use crate::procs::{Instance, InstanceSpec};
use crate::scenarios::{BURST, BURST_SEATS, CYCLE, GALERA_FEATURES, HELD, LIVE};
use crate::vclient::Identity;
use crate::Args;

/// A file of this repository (the shipped NGINX configuration).
pub(crate) fn repo_file(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .join(rel)
}

/// Runs `bin args…` to completion: its stdout, or why it failed.
pub(crate) fn run(bin: &Path, args: &[&str]) -> anyhow::Result<String> {
    let out = std::process::Command::new(bin)
        .args(args)
        .output()
        .with_context(|| format!("cannot run {}", bin.display()))?;
    if !out.status.success() {
        bail!(
            "{} {}: {}",
            bin.display(),
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

async fn admin(
    http: &reqwest::Client,
    inst: &Instance,
    token: &str,
    path: &str,
    body: reqwest::Body,
    json: bool,
) -> anyhow::Result<serde_json::Value> {
    let mut rb = http
        .post(format!("http://{}{path}", inst.admin))
        .bearer_auth(token)
        .body(body);
    if json {
        rb = rb.header("content-type", "application/json");
    }
    let r = rb.send().await?;
    let status = r.status();
    let v: serde_json::Value = r.json().await?;
    if !status.is_success() {
        bail!("admin {path}: HTTP {status}: {v}");
    }
    Ok(v)
}

/// What every part of a run shares: the binary, and the license and keys
/// its instances start with.
pub(crate) struct Setup {
    /// The floatlm binary the instances run (and that made the licenses).
    pub bin: PathBuf,
    pub dir: PathBuf,
    pub lic: PathBuf,
    /// The smaller license of the Galera part.
    pub lic_galera: PathBuf,
    pub vendor_pub: PathBuf,
    pub master_key: String,
    pub token: String,
    pub http: reqwest::Client,
}

impl Setup {
    /// A vendor key and the licenses of the bench's features, made by `bin`
    /// in `dir`.
    pub fn new(bin: &Path, dir: PathBuf, http: reqwest::Client) -> anyhow::Result<Setup> {
        let vendor = dir.join("vendor");
        run(
            bin,
            &["vendor", "keygen", "--out", &vendor.display().to_string()],
        )?;
        let sign = |name: &str, features: &[(&str, u64)]| -> anyhow::Result<PathBuf> {
            let def = dir.join(format!("{name}.toml"));
            let mut text = "license_id = \"BENCH\"\nserial = 1\ncustomer = \"bench\"\n".to_string();
            for (f, seats) in features {
                text.push_str(&format!("[[feature]]\nname = \"{f}\"\nseats = {seats}\n"));
            }
            std::fs::write(&def, text)?;
            let lic = dir.join(format!("{name}.lic"));
            run(
                bin,
                &[
                    "vendor",
                    "sign",
                    "--key",
                    &vendor.join("vendor.key").display().to_string(),
                    "--out",
                    &lic.display().to_string(),
                    &def.display().to_string(),
                ],
            )?;
            Ok(lic)
        };
        Ok(Setup {
            bin: bin.to_path_buf(),
            lic: sign(
                "bench",
                &[
                    (CYCLE, 10_000),
                    (HELD, 20_000),
                    (LIVE, 100_000),
                    (BURST, BURST_SEATS),
                ],
            )?,
            // Galera replicates the license's slot rows in one write set:
            // only what its three scenarios need.
            lic_galera: sign(
                "bench-galera",
                &[
                    (CYCLE, 2_000),
                    (HELD, 10_000),
                    (BURST, GALERA_FEATURES.burst_cap),
                ],
            )?,
            vendor_pub: vendor.join("vendor.pub"),
            master_key: format!(
                "k1:{}",
                base64::engine::general_purpose::STANDARD.encode(rand::random::<[u8; 32]>())
            ),
            token: format!("bench-admin-{:016x}", rand::random::<u64>()),
            dir,
            http,
        })
    }

    /// How the instances of a run start, on `database_url`.
    pub fn spec<'a>(&'a self, args: &'a Args, database_url: &'a str) -> InstanceSpec<'a> {
        InstanceSpec {
            bin: &self.bin,
            dir: &self.dir,
            database_url,
            master_key: &self.master_key,
            admin_token: &self.token,
            vendor_pub: &self.vendor_pub,
            // Long enough that leases survive the set-up of the largest scenario.
            lease_ttl: "600s",
            // 90 s above the TTL: a lease is not extended for 89 s after each
            // write (its heartbeats are answered from reads), so with heartbeats
            // every 30 s one in three writes, as with the defaults (60 s TTL,
            // heartbeat every 20 s, 120 s hold).
            lease_hold: "690s",
            log_level: &args.server_log_level,
            max_sessions: args.max_sessions(),
        }
    }

    /// Applies license `lic` through `first` and creates the bench identity.
    pub async fn seed(&self, first: &Instance, lic: &Path) -> anyhow::Result<Identity> {
        let (http, token) = (&self.http, &self.token);
        admin(
            http,
            first,
            token,
            "/admin/v1/licenses",
            std::fs::read_to_string(lic)?.into(),
            false,
        )
        .await?;
        let v = admin(
            http,
            first,
            token,
            "/admin/v1/identities",
            r#"{"name":"bench"}"#.into(),
            true,
        )
        .await?;
        Identity::parse(v["identity_string"].as_str().unwrap_or_default())
    }
}
