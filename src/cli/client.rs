//! `floatlm ping | query | checkout`: the client side, on the client library.

use anyhow::{anyhow, bail, Context};
use clap::Args;
use floatlm_client::{Client, ClientError, HandleState, Options};
use std::process::ExitCode;
use std::time::Duration;

/// Exit code when the server refuses a seat.
const EXIT_NO_LICENSE: u8 = 3;

#[derive(Args, Debug)]
pub struct PingArgs {
    /// Server HOST:PORT (or an identity string; only its address is used).
    #[arg(short = 's', long = "server", required = true)]
    pub servers: Vec<String>,
    /// Seconds to wait for an answer.
    #[arg(long, default_value = "5")]
    pub timeout: f64,
}

#[derive(Args, Debug)]
pub struct HealthArgs {
    /// Server HOST:PORT (licensing listener).
    #[arg(short = 's', long = "server", default_value = "127.0.0.1:8990")]
    pub server: String,
    /// Seconds to wait for an answer.
    #[arg(long, default_value = "3")]
    pub timeout: f64,
}

#[derive(Args, Debug, Clone)]
pub struct ServerArgs {
    /// Identity string ID:SECRET@HOST:PORT, or HOST:PORT with --identity; repeat for several servers.
    #[arg(short = 's', long = "server")]
    pub servers: Vec<String>,
    /// Identity string(s), comma separated; also FLOATLM_IDENTITY.
    #[arg(long, env = "FLOATLM_IDENTITY", hide_env_values = true)]
    pub identity: Option<String>,
}

#[derive(Args, Debug)]
pub struct QueryArgs {
    #[command(flatten)]
    pub server: ServerArgs,
    /// Features to show (all when none).
    pub features: Vec<String>,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct CheckoutArgs {
    #[command(flatten)]
    pub server: ServerArgs,
    /// The feature to check out.
    pub feature: String,
    /// Hold the seat this many seconds instead of running a command.
    #[arg(long, value_name = "SECS", conflicts_with = "command")]
    pub hold: Option<f64>,
    /// The command to run while holding the seat (after --).
    #[arg(last = true)]
    pub command: Vec<String>,
}

/// The identity strings to use; a usage error is printed and becomes exit 2.
fn identities(args: &ServerArgs) -> Result<Vec<String>, ExitCode> {
    identity_strings(args).map_err(|e| {
        eprintln!("floatlm: {e}");
        ExitCode::from(2)
    })
}

/// The identity strings to use, from -s values and --identity/FLOATLM_IDENTITY.
pub fn identity_strings(args: &ServerArgs) -> anyhow::Result<Vec<String>> {
    let ids: Vec<String> = args
        .identity
        .as_deref()
        .unwrap_or("")
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect();
    let mut out = Vec::new();
    for s in &args.servers {
        if s.contains('@') {
            out.push(s.clone());
        } else {
            let id = ids.first().ok_or_else(|| {
                anyhow!("-s {s} names only an address: give the identity with --identity or FLOATLM_IDENTITY")
            })?;
            let cred = id.rsplit_once('@').map(|(c, _)| c).unwrap_or(id);
            out.push(format!("{cred}@{s}"));
        }
    }
    if out.is_empty() {
        out = ids;
    }
    if out.is_empty() {
        bail!("no server given: pass -s ID:SECRET@HOST:PORT, or set FLOATLM_IDENTITY");
    }
    Ok(out)
}

/// `GET /sentinel/ldk/v1/healthz`: exit 0 when the instance can serve (for
/// container health checks), 1 with the reason when not.
pub async fn health(args: HealthArgs) -> ExitCode {
    let url = format!(
        "http://{}/sentinel/ldk/v1/healthz",
        args.server
            .rsplit_once('@')
            .map_or(args.server.as_str(), |(_, a)| a)
    );
    let http = match reqwest::Client::builder()
        .timeout(Duration::from_secs_f64(args.timeout.clamp(0.1, 300.0)))
        .build()
    {
        Ok(h) => h,
        Err(e) => {
            eprintln!("floatlm: {e}");
            return ExitCode::FAILURE;
        }
    };
    let answer = match http.get(&url).send().await {
        Ok(r) => (r.status(), r.text().await.unwrap_or_default()),
        Err(e) => {
            eprintln!("floatlm: {url}: {e}");
            return ExitCode::FAILURE;
        }
    };
    match answer {
        (status, body) if status.is_success() => {
            println!("{body}");
            ExitCode::SUCCESS
        }
        (status, body) => {
            eprintln!("floatlm: {url}: HTTP {status} {body}");
            ExitCode::FAILURE
        }
    }
}

pub async fn ping(args: PingArgs) -> ExitCode {
    let mut failed = false;
    for s in &args.servers {
        let addr = s.rsplit_once('@').map(|(_, a)| a).unwrap_or(s);
        match Client::ping(
            addr,
            Duration::from_secs_f64(args.timeout.clamp(0.1, 300.0)),
        )
        .await
        {
            Ok(p) => println!(
                "{addr}: instance {} version {} protocol {} in {:.1} ms",
                p.instance,
                p.version,
                p.protocol,
                p.round_trip.as_secs_f64() * 1000.0
            ),
            Err(e) => {
                eprintln!("floatlm: {addr}: {e}");
                failed = true;
            }
        }
    }
    if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

fn fail(e: &ClientError) -> ExitCode {
    eprintln!("floatlm: {e}");
    match e {
        ClientError::NoLicense { .. } => ExitCode::from(EXIT_NO_LICENSE),
        _ => ExitCode::FAILURE,
    }
}

pub async fn query(args: QueryArgs) -> ExitCode {
    let ids = match identities(&args.server) {
        Ok(i) => i,
        Err(code) => return code,
    };
    let client = match Client::connect(&ids, Options::from_env()).await {
        Ok(c) => c,
        Err(e) => return fail(&e),
    };
    let wanted: Vec<&str> = args.features.iter().map(String::as_str).collect();
    match client.query(&wanted).await {
        Ok(features) => {
            if args.json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&features).unwrap_or_default()
                );
            } else {
                println!(
                    "{:<24} {:>6} {:>6} {:>6}",
                    "FEATURE", "TOTAL", "USED", "FREE"
                );
                for f in &features {
                    println!("{:<24} {:>6} {:>6} {:>6}", f.name, f.total, f.used, f.free);
                }
            }
            for w in &wanted {
                if !features.iter().any(|f| f.name == *w) {
                    eprintln!("floatlm: feature '{w}' is not licensed on this server");
                    return ExitCode::FAILURE;
                }
            }
            ExitCode::SUCCESS
        }
        Err(e) => fail(&e),
    }
}

pub async fn checkout(args: CheckoutArgs) -> ExitCode {
    let ids = match identities(&args.server) {
        Ok(i) => i,
        Err(code) => return code,
    };
    if args.hold.is_none() && args.command.is_empty() {
        eprintln!("floatlm: give a command after -- (floatlm checkout -s … FEATURE -- CMD ARGS…) or --hold SECS");
        return ExitCode::from(2);
    }
    let client = match Client::connect(&ids, Options::from_env()).await {
        Ok(c) => c,
        Err(e) => return fail(&e),
    };
    let seat = match client.checkout(&args.feature).await {
        Ok(s) => s,
        Err(e) => return fail(&e),
    };
    eprintln!(
        "floatlm: holding a seat of '{}' (lease {})",
        args.feature,
        seat.lease()
    );
    let code = match run_while_held(&args, &seat).await {
        Ok(code) => code,
        Err(e) => {
            eprintln!("floatlm: {e:#}");
            ExitCode::FAILURE
        }
    };
    if !seat.release().await {
        eprintln!("floatlm: note: the server had already dropped the lease");
    }
    code
}

async fn run_while_held(
    args: &CheckoutArgs,
    seat: &floatlm_client::SeatHandle,
) -> anyhow::Result<ExitCode> {
    let lost = async {
        loop {
            tokio::time::sleep(Duration::from_millis(250)).await;
            if let HandleState::Lost { reason } = seat.state() {
                return reason;
            }
        }
    };
    if let Some(secs) = args.hold {
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs_f64(secs.clamp(0.0, 365.0 * 86400.0))) => return Ok(ExitCode::SUCCESS),
            reason = lost => bail!("seat lost: {reason}"),
        }
    }
    let mut child = tokio::process::Command::new(&args.command[0])
        .args(&args.command[1..])
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("cannot run {}", args.command[0]))?;
    tokio::select! {
        status = child.wait() => {
            let status = status?;
            use std::os::unix::process::ExitStatusExt;
            let code = status.code().unwrap_or_else(|| 128 + status.signal().unwrap_or(0));
            Ok(ExitCode::from(code.clamp(0, 255) as u8))
        }
        reason = lost => {
            let _ = child.kill().await;
            bail!("seat lost, command stopped: {reason}")
        }
    }
}
