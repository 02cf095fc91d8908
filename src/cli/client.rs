//! `floatlm ping | query | checkout | seats | release`: the client side, on
//! the client library.

use anyhow::Context;
use clap::Args;
use floatlm_client::{Client, ClientError, Released, SeatHandle, SeatRelease};
use std::process::ExitCode;
use std::time::Duration;
use tokio::signal::unix::{signal, Signal, SignalKind};

pub use super::client_config::ServerArgs;
use super::client_config::{StatusWatch, TlsArgs};

/// Exit code when the server refuses a seat.
pub const EXIT_NO_LICENSE: u8 = 3;
/// Exit code when the seat was lost: CMD was stopped for it (`--on-loss
/// term|kill`), or a `--hold` ended early.
pub const EXIT_SEAT_LOST: u8 = 4;

#[derive(Args, Debug)]
pub struct PingArgs {
    /// Server HOST:PORT or https://HOST[:PORT] (or an identity string; only
    /// its address is used); repeat for several. Default: the servers of
    /// the client configuration.
    #[arg(short = 's', long = "server")]
    pub servers: Vec<String>,
    #[command(flatten)]
    pub tls: TlsArgs,
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
pub struct SeatsArgs {
    #[command(flatten)]
    pub server: ServerArgs,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct ReleaseArgs {
    #[command(flatten)]
    pub server: ServerArgs,
    /// The seat to release, as `floatlm seats` lists it (or its lease id).
    pub lease: String,
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
    /// What to do with CMD when the seat is lost while it runs.
    #[arg(
        long,
        value_enum,
        value_name = "ACTION",
        default_value_t = OnLoss::Term,
        conflicts_with = "hold"
    )]
    pub on_loss: OnLoss,
    /// Seconds CMD has to exit after the SIGTERM of --on-loss term before it
    /// gets SIGKILL.
    #[arg(
        long,
        value_name = "SECS",
        default_value = "10",
        conflicts_with = "hold"
    )]
    pub kill_after: f64,
    /// The command to run while holding the seat (after --).
    #[arg(last = true)]
    pub command: Vec<String>,
}

/// What `floatlm checkout` does with CMD when its seat is lost.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum OnLoss {
    /// SIGTERM, then SIGKILL after --kill-after seconds.
    Term,
    /// SIGKILL at once.
    Kill,
    /// Warn and let CMD run on without a seat.
    Ignore,
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
    let (addrs, options) = match super::client_config::ping_targets(&args.servers, &args.tls) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("floatlm: {e}");
            return ExitCode::from(2);
        }
    };
    let mut failed = false;
    for addr in &addrs {
        match Client::ping_with(
            addr,
            Duration::from_secs_f64(args.timeout.clamp(0.1, 300.0)),
            &options,
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
    say(e);
    match e {
        ClientError::NoLicense { .. } => ExitCode::from(EXIT_NO_LICENSE),
        _ => ExitCode::FAILURE,
    }
}

pub async fn query(args: QueryArgs) -> ExitCode {
    let (servers, options) = match args.server.resolve() {
        Ok(r) => r,
        Err(code) => return code,
    };
    let client = match Client::with_servers(servers, options).await {
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

/// A time of the server's (Unix milliseconds) as UTC, to the second.
fn utc_ms(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|t| t.format("%Y-%m-%d %H:%M:%S UTC").to_string())
        .unwrap_or_else(|| "-".into())
}

/// `floatlm seats`: the leases the identity holds now.
pub async fn seats(args: SeatsArgs) -> ExitCode {
    let (servers, options) = match args.server.resolve() {
        Ok(r) => r,
        Err(code) => return code,
    };
    let client = match Client::with_servers(servers, options).await {
        Ok(c) => c,
        Err(e) => return fail(&e),
    };
    let (seats, more) = match client.mine().await {
        Ok(s) => (s.leases, s.more),
        Err(e) => return fail(&e),
    };
    if args.json {
        let all = serde_json::json!({ "leases": seats, "more": more });
        println!("{}", serde_json::to_string_pretty(&all).unwrap_or_default());
        return ExitCode::SUCCESS;
    }
    if seats.is_empty() {
        println!("this identity holds no seat");
        return ExitCode::SUCCESS;
    }
    println!(
        "{:<40} {:<20} {:<16} {:<24} {:<23} PROMISE END",
        "LEASE", "FEATURE", "USER", "HOST", "SINCE"
    );
    for s in &seats {
        println!(
            "{:<40} {:<20} {:<16} {:<24} {:<23} {}",
            s.lease,
            s.feature,
            s.user,
            s.host,
            utc_ms(s.since_ms),
            utc_ms(s.promise_end_ms)
        );
    }
    if more > 0 {
        println!("… and {more} more seats than one answer holds");
    }
    ExitCode::SUCCESS
}

/// `floatlm release LEASE`: releases a seat of the identity.
pub async fn release_seat(args: ReleaseArgs) -> ExitCode {
    let (servers, options) = match args.server.resolve() {
        Ok(r) => r,
        Err(code) => return code,
    };
    if args
        .lease
        .parse::<crate::domain::seats::LeaseRef>()
        .is_err()
    {
        eprintln!(
            "floatlm: '{}' is not a seat: give the LEASE column of `floatlm seats`",
            args.lease.chars().take(60).collect::<String>()
        );
        return ExitCode::from(2);
    }
    let client = match Client::with_servers(servers, options).await {
        Ok(c) => c,
        Err(e) => return fail(&e),
    };
    match client.release_lease(&args.lease).await {
        Ok(SeatRelease::Released { free_at }) => {
            let when = free_at
                .map(|t| utc_ms(chrono::DateTime::<chrono::Utc>::from(t).timestamp_millis()))
                .unwrap_or_else(|| "shortly".into());
            println!(
                "released {}: its holder loses the seat at its next heartbeat; the seat is free for others by {when} (once the promise already given to the holder has run out)",
                args.lease
            );
            ExitCode::SUCCESS
        }
        Ok(SeatRelease::Resent) => {
            println!(
                "{}: not held any more (the request had to be resent; an earlier copy may have released it)",
                args.lease
            );
            ExitCode::SUCCESS
        }
        Ok(SeatRelease::NotLive) => {
            say(format!(
                "{}: this identity holds no such seat (already released, expired, or not one of its seats); `floatlm seats` lists them",
                args.lease
            ));
            ExitCode::FAILURE
        }
        Err(e) => fail(&e),
    }
}

/// How long checkout waits for the server to confirm a release before it
/// exits anyway (the seat then frees itself when its lease runs out).
const RELEASE_WAIT: Duration = Duration::from_secs(5);

/// Shown by `floatlm checkout --help`; README.md says the same.
pub const CHECKOUT_HELP: &str = "\
Signals:
  SIGTERM, SIGINT and SIGHUP sent to `floatlm checkout` are passed on to CMD.
  Checkout then waits for CMD to exit, releases the seat (waiting up to 5 s
  for the server's answer) and exits with CMD's status. When checkout runs in
  the foreground of a terminal, the terminal's own SIGINT (Ctrl-C) and SIGHUP
  already reach CMD, which shares its process group, so those are not sent a
  second time. With --hold, the three signals release the seat and end the
  hold. Checkout does not exit while CMD runs; should checkout itself be
  killed (SIGKILL, out of memory), Linux sends CMD SIGTERM.

Seat loss:
  If the seat is lost while CMD runs (an operator released it, or no server
  confirmed it before the lease's promise ended), checkout says so on stderr
  and acts per --on-loss: `term` sends CMD SIGTERM and, if it has not exited
  after --kill-after seconds, SIGKILL; `kill` sends SIGKILL; `ignore` only
  warns and lets CMD run on without a seat.

Exit status:
  CMD's own            CMD exited (128+N when signal N ended it)
  1                    no server reachable, CMD could not be started, other errors
  2                    usage error
  3                    no license (all seats taken, denied, unknown feature, ...)
  4                    the seat was lost and CMD was stopped (or --hold ended)
  128+N                signal N ended --hold, or came before CMD started";

/// Writes `floatlm: MSG` to stderr. Never panics: a closed stderr must not
/// take checkout down while CMD runs (which would leave CMD without a seat).
fn say(msg: impl std::fmt::Display) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "floatlm: {msg}");
}

fn signal_name(sig: i32) -> &'static str {
    match sig {
        libc::SIGTERM => "SIGTERM",
        libc::SIGINT => "SIGINT",
        libc::SIGHUP => "SIGHUP",
        libc::SIGKILL => "SIGKILL",
        _ => "a signal",
    }
}

/// 128+N for signal N, as shells report a command a signal ended.
fn signal_exit(sig: i32) -> ExitCode {
    ExitCode::from((128 + sig).clamp(0, 255) as u8)
}

/// The signals checkout forwards to CMD and that end a `--hold`. Installed
/// before anything else, so that a signal at any moment (even while the
/// server is still answering the login) leads to a release, not a seat
/// left held until its lease runs out.
struct Signals {
    term: Signal,
    int: Signal,
    hup: Signal,
}

impl Signals {
    fn install() -> std::io::Result<Signals> {
        Ok(Signals {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
            hup: signal(SignalKind::hangup())?,
        })
    }

    /// The next signal received. Cancel-safe, like `Signal::recv`.
    async fn recv(&mut self) -> i32 {
        tokio::select! {
            Some(()) = self.term.recv() => libc::SIGTERM,
            Some(()) = self.int.recv() => libc::SIGINT,
            Some(()) = self.hup.recv() => libc::SIGHUP,
            else => std::future::pending().await,
        }
    }
}

/// Whether this process is in the foreground process group of its
/// controlling terminal. CMD shares checkout's process group, so the
/// terminal's SIGINT and SIGHUP reach it directly; passing them on too would
/// deliver them twice (a second Ctrl-C means "quit now" to many programs).
fn in_terminal_foreground() -> bool {
    use std::os::fd::AsRawFd;
    let Ok(tty) = std::fs::File::open("/dev/tty") else {
        return false; // no controlling terminal
    };
    // SAFETY: plain system calls; `tty` stays open across them.
    let (fg, own) = unsafe { (libc::tcgetpgrp(tty.as_raw_fd()), libc::getpgrp()) };
    fg > 0 && fg == own
}

pub async fn checkout(args: CheckoutArgs) -> ExitCode {
    let (servers, options) = match args.server.resolve() {
        Ok(r) => r,
        Err(code) => return code,
    };
    if args.hold.is_none() && args.command.is_empty() {
        say("give a command after -- (floatlm checkout -s … FEATURE -- CMD ARGS…) or --hold SECS");
        return ExitCode::from(2);
    }
    if !(args.kill_after >= 0.0 && args.kill_after <= 86400.0) {
        say("--kill-after takes seconds between 0 and 86400");
        return ExitCode::from(2);
    }
    let mut signals = match Signals::install() {
        Ok(s) => s,
        Err(e) => {
            say(format_args!("cannot handle signals: {e}"));
            return ExitCode::FAILURE;
        }
    };
    let client = tokio::select! {
        c = Client::with_servers(servers, options) => match c {
            Ok(c) => c,
            Err(e) => return fail(&e),
        },
        sig = signals.recv() => {
            say(format_args!("got {}; stopping before a seat was checked out", signal_name(sig)));
            return signal_exit(sig);
        }
    };
    let login = client.checkout(&args.feature);
    tokio::pin!(login);
    let seat = tokio::select! {
        s = &mut login => match s {
            Ok(s) => s,
            Err(e) => return fail(&e),
        },
        sig = signals.recv() => {
            // The server may be granting the seat right now: take the
            // answer (bounded) so the seat can be given back at once.
            say(format_args!("got {}; giving back the seat if the server grants it, then exiting", signal_name(sig)));
            if let Ok(Ok(seat)) = tokio::time::timeout(RELEASE_WAIT, login).await {
                release(seat, false).await;
            }
            return signal_exit(sig);
        }
    };
    say(format_args!(
        "holding a seat of '{}' (lease {})",
        args.feature,
        seat.lease()
    ));
    // Which server and group the seat is renewed through, and each change.
    let _status = StatusWatch::start(&client);
    let ended = match args.hold {
        Some(secs) => hold(secs, &seat, &mut signals).await,
        None => run_command(&args, &seat, &mut signals).await,
    };
    let (code, lost) = match ended {
        Ok(Ended { code, lost }) => (code, lost),
        Err(e) => {
            say(format_args!("{e:#}"));
            (ExitCode::FAILURE, seat.loss().is_some())
        }
    };
    release(seat, lost).await;
    code
}

/// How a hold or a command ended: the exit code, and whether the seat was
/// lost meanwhile (then no note that the server had dropped it).
struct Ended {
    code: ExitCode,
    lost: bool,
}

/// Gives the seat back and waits (bounded) for the server's answer.
async fn release(seat: SeatHandle, lost: bool) {
    match tokio::time::timeout(RELEASE_WAIT, seat.give_back()).await {
        Ok(Ok(Released::Released)) => {}
        Ok(Ok(Released::AlreadyEnded)) if !lost => say(
            "note: the lease had already ended on the server (it expired, or an operator released it) \
             before checkout gave it back",
        ),
        Ok(Ok(Released::AlreadyEnded)) => {}
        // The seat is free; an earlier copy of the logout, sent to a server
        // that was slow to answer, most likely released it.
        Ok(Ok(Released::Resent)) => {}
        Ok(Err(e)) => say(format_args!(
            "could not give the seat back ({e}); it frees itself when its lease runs out"
        )),
        Err(_) => say(format_args!(
            "no server confirmed the release within {} s; the seat frees itself when its lease runs out",
            RELEASE_WAIT.as_secs()
        )),
    }
}

async fn hold(secs: f64, seat: &SeatHandle, signals: &mut Signals) -> anyhow::Result<Ended> {
    let period = Duration::from_secs_f64(secs.clamp(0.0, 365.0 * 86400.0));
    tokio::select! {
        _ = tokio::time::sleep(period) => Ok(Ended { code: ExitCode::SUCCESS, lost: false }),
        sig = signals.recv() => {
            say(format_args!("got {}; releasing the seat", signal_name(sig)));
            Ok(Ended { code: signal_exit(sig), lost: false })
        }
        reason = seat.lost() => {
            say(format_args!(
                "lost the seat of '{}': {reason}; ending the hold (exit code {EXIT_SEAT_LOST})",
                seat.feature()
            ));
            Ok(Ended { code: ExitCode::from(EXIT_SEAT_LOST), lost: true })
        }
    }
}

/// Sends `sig` to CMD while it has not been reaped (its pid is still its own).
fn send(child: &tokio::process::Child, sig: i32) {
    if let Some(pid) = child.id() {
        // SAFETY: kill(2) on our own, not yet reaped, child.
        unsafe {
            libc::kill(pid as libc::pid_t, sig);
        }
    }
}

/// Runs CMD until it exits, passing signals on and acting on seat loss.
async fn run_command(
    args: &CheckoutArgs,
    seat: &SeatHandle,
    signals: &mut Signals,
) -> anyhow::Result<Ended> {
    let name = &args.command[0];
    let mut cmd = tokio::process::Command::new(name);
    // kill_on_drop: an early return or a panic here still stops CMD.
    cmd.args(&args.command[1..]).kill_on_drop(true);
    #[cfg(target_os = "linux")]
    {
        let parent = std::process::id() as libc::pid_t;
        // SAFETY: only async-signal-safe system calls between fork and exec.
        unsafe {
            cmd.pre_exec(move || {
                // If checkout dies without a chance to stop CMD (SIGKILL, the
                // OOM killer), CMD gets SIGTERM instead of running on without a
                // seat. The death signal follows the thread that forks: this
                // runs on the main thread (checkout is the future of
                // `block_on` in cli::main), which lives as long as the process.
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
                if libc::getppid() != parent {
                    libc::raise(libc::SIGTERM);
                }
                Ok(())
            });
        }
    }
    let mut child = cmd.spawn().with_context(|| format!("cannot run {name}"))?;
    let lost = seat.lost();
    tokio::pin!(lost);
    let mut stopped_for_loss = false;
    let mut loss_seen = false;
    let mut kill_at: Option<tokio::time::Instant> = None;
    let grace = Duration::from_secs_f64(args.kill_after);
    let status = loop {
        tokio::select! {
            status = child.wait() => break status.with_context(|| format!("waiting for {name}"))?,
            sig = signals.recv() => {
                if sig != libc::SIGTERM && in_terminal_foreground() {
                    say(format_args!("got {} from the terminal, which sent it to {name} too; waiting for {name} to exit", signal_name(sig)));
                } else {
                    say(format_args!("got {}; passing it to {name} and waiting for it to exit", signal_name(sig)));
                    send(&child, sig);
                }
            }
            reason = &mut lost, if !loss_seen => {
                loss_seen = true;
                let what = format!("lost the seat of '{}' while {name} runs: {reason}", seat.feature());
                match args.on_loss {
                    OnLoss::Ignore => say(format_args!(
                        "{what}; --on-loss ignore: letting {name} run on WITHOUT a seat"
                    )),
                    OnLoss::Term => {
                        say(format_args!(
                            "{what}; stopping {name}: SIGTERM now, SIGKILL if it has not exited in {} s; then exiting with code {EXIT_SEAT_LOST}",
                            args.kill_after
                        ));
                        send(&child, libc::SIGTERM);
                        kill_at = Some(tokio::time::Instant::now() + grace);
                        stopped_for_loss = true;
                    }
                    OnLoss::Kill => {
                        say(format_args!("{what}; stopping {name} with SIGKILL; then exiting with code {EXIT_SEAT_LOST}"));
                        let _ = child.start_kill();
                        stopped_for_loss = true;
                    }
                }
            }
            _ = tokio::time::sleep_until(kill_at.unwrap_or_else(tokio::time::Instant::now)), if kill_at.is_some() => {
                say(format_args!("{name} did not exit within {} s of SIGTERM; sending SIGKILL", args.kill_after));
                let _ = child.start_kill();
                kill_at = None;
            }
        }
    };
    if stopped_for_loss {
        return Ok(Ended {
            code: ExitCode::from(EXIT_SEAT_LOST),
            lost: true,
        });
    }
    use std::os::unix::process::ExitStatusExt;
    let code = status
        .code()
        .unwrap_or_else(|| 128 + status.signal().unwrap_or(0));
    Ok(Ended {
        code: ExitCode::from(code.clamp(0, 255) as u8),
        lost: loss_seen,
    })
}
