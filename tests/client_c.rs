//! The C library (crates/client-ffi) against a real `floatlm serve` with a
//! license of 2 seats: examples/c/checkout.c compiled with `cc` against the
//! shared and the static library and run; one client used from several
//! threads; the loss callback when an operator releases a seat; live objects
//! of the wrong kind refused; a checkout that times out. The library is a
//! dev-dependency of this package, so cargo builds
//! libfloatlm_client_ffi.{so,a} into target/*/deps before these tests run.

use std::ffi::{c_char, c_void, CStr, CString};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::ptr::{null, null_mut};
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use floatlm_client_ffi::*;
use testkit::{admin_cli, bin, cli_license, cluster_instance, created_credential, ServerProc};

const FEATURE: &str = "cad";
const SEATS: u32 = 2;

struct Server {
    proc: ServerProc,
    identity: String,
    dir: tempfile::TempDir,
}

/// A `floatlm serve` on SQLite with a 2-seat license of `cad` and an identity.
fn server(lease_ttl: &str) -> Server {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (pubkey, lic) = cli_license(d, "CAPI", FEATURE, SEATS);
    let url = format!("sqlite://{}", d.join("floatlm.db").display());
    let proc = cluster_instance(
        d,
        url.as_str(),
        "capi-1",
        "127.0.0.1:0",
        &["--vendor-key", &pubkey, "--lease-ttl", lease_ttl],
        &[],
    );
    admin_cli(&proc, &["apply", &lic]);
    let cred = created_credential(&admin_cli(&proc, &["identity", "create", "--name", "capi"]));
    let identity = format!("{cred}@{}", proc.licensing);
    Server {
        proc,
        identity,
        dir,
    }
}

/// Seats of `cad` in use, asked through the Rust client.
fn used(identity: &str) -> i64 {
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let c = floatlm_client::Client::connect(&[identity], floatlm_client::Options::default())
            .await
            .unwrap();
        let f = c.query(&[FEATURE]).await.unwrap();
        f.iter()
            .find(|f| f.name == FEATURE)
            .expect("feature cad")
            .used
    })
}

/// Where cargo put libfloatlm_client_ffi.{so,a}: the deps folder beside the
/// floatlm binary (a dependency's cdylib and staticlib keep their plain
/// names there).
fn lib_dir() -> PathBuf {
    let deps = Path::new(bin()).parent().unwrap().join("deps");
    for lib in ["libfloatlm_client_ffi.so", "libfloatlm_client_ffi.a"] {
        assert!(
            deps.join(lib).exists(),
            "{} is missing: cargo builds it as a dev-dependency of the floatlm package",
            deps.join(lib).display()
        );
    }
    deps
}

/// Compiles examples/c/checkout.c with `cc` into `out`, with `link` flags.
fn compile(out: &Path, link: &[String]) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let res = Command::new("cc")
        .args(["-std=c99", "-Wall", "-Wextra", "-Werror", "-o"])
        .arg(out)
        .arg(root.join("examples/c/checkout.c"))
        .arg("-I")
        .arg(root.join("crates/client-ffi/include"))
        .args(link)
        .output()
        .expect("cc runs (apt-get install gcc)");
    assert!(
        res.status.success(),
        "cc {link:?} failed:\n{}",
        String::from_utf8_lossy(&res.stderr)
    );
}

/// Runs `exe ARGS`, killing it after 60 s; (exit code, stdout, stderr).
fn run(exe: &Path, args: &[&str]) -> (i32, String, String) {
    let mut child = Command::new(exe)
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("{} {args:?} did not finish within 60 s", exe.display());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn the_c_example_checks_out_is_refused_the_next_seat_and_releases_shared_and_static() {
    let srv = server("60s");
    let libs = lib_dir();
    let shared = srv.dir.path().join("checkout-shared");
    compile(
        &shared,
        &[
            "-L".into(),
            libs.display().to_string(),
            "-lfloatlm_client_ffi".into(),
            format!("-Wl,-rpath,{}", libs.display()),
        ],
    );
    let static_ = srv.dir.path().join("checkout-static");
    compile(
        &static_,
        &[
            libs.join("libfloatlm_client_ffi.a").display().to_string(),
            "-lpthread".into(),
            "-ldl".into(),
            "-lm".into(),
        ],
    );
    for exe in [&shared, &static_] {
        let (code, out, err) = run(exe, &[&srv.identity, FEATURE, "2"]);
        let what = format!(
            "{}: exit {code}\nstdout:\n{out}\nstderr:\n{err}",
            exe.display()
        );
        assert_eq!(code, 0, "{what}");
        for line in [
            "seat 1 of cad: lease ",
            "seat 2 of cad: lease ",
            "seat 3 refused: FLOATLM_STATUS_NO_LICENSE FLOATLM_NO_LICENSE_REASON_ALL_SEATS_TAKEN: No license",
            "released 2 seats",
        ] {
            assert!(out.contains(line), "missing {line:?} in {what}");
        }
        assert_eq!(out.matches(", held, valid for ").count(), 2, "{what}");
        assert!(err.is_empty(), "nothing on stderr (no seat lost): {what}");
        assert_eq!(used(&srv.identity), 0, "every seat released: {what}");
    }
    // Told there is 1 seat when there are 2, the example says the second
    // was not refused (exit 3) and still releases both.
    let (code, _, err) = run(&shared, &[&srv.identity, FEATURE, "1"]);
    assert_eq!(code, 3, "{err}");
    assert!(err.contains("seat 2 was not refused"), "{err}");
    assert_eq!(used(&srv.identity), 0);
    // A wrong secret: exit 2 with the code's name.
    let (cred, at) = srv.identity.split_once('@').unwrap();
    let (id, _) = cred.split_once(':').unwrap();
    let (code, _, err) = run(&shared, &[&format!("{id}:wrong@{at}"), FEATURE, "1"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("FLOATLM_STATUS_AUTH_FAILED"), "{err}");
}

#[test]
fn the_header_compiles_as_c99_c23_and_cpp() {
    let header = Path::new(env!("CARGO_MANIFEST_DIR")).join("crates/client-ffi/include/floatlm.h");
    for (compiler, lang, std) in [
        ("cc", "c", "-std=c99"),
        ("cc", "c", "-std=c2x"),
        ("c++", "c++", "-std=c++11"),
    ] {
        let res = Command::new(compiler)
            .args([
                std,
                "-Wall",
                "-Wextra",
                "-Werror",
                "-pedantic",
                "-fsyntax-only",
                "-x",
                lang,
            ])
            .arg(&header)
            .output()
            .unwrap_or_else(|e| panic!("{compiler} runs (apt-get install g++): {e}"));
        assert!(
            res.status.success(),
            "{compiler} {std}: {}",
            String::from_utf8_lossy(&res.stderr)
        );
    }
}

fn error() -> Box<FloatlmError> {
    Box::new(unsafe { std::mem::zeroed() })
}

fn text(e: &FloatlmError) -> String {
    unsafe { CStr::from_ptr(e.message.as_ptr()) }
        .to_string_lossy()
        .into_owned()
}

fn new_client(identity: &str) -> *mut FloatlmClient {
    let id = CString::new(identity).unwrap();
    let mut client = null_mut();
    let mut e = error();
    let rc = unsafe { floatlm_client_new(id.as_ptr(), null(), &mut client, &mut *e) };
    assert_eq!(rc, FloatlmStatus::Ok, "{}", text(&e));
    client
}

fn state(seat: *const FloatlmSeat) -> FloatlmSeatState {
    let mut st = FloatlmSeatState::Held;
    let mut e = error();
    let rc = unsafe { floatlm_seat_state(seat, &mut st, &mut *e) };
    assert_eq!(rc, FloatlmStatus::Ok, "{}", text(&e));
    st
}

fn take_string(s: *mut c_char) -> String {
    assert!(!s.is_null());
    let t = unsafe { CStr::from_ptr(s) }.to_str().unwrap().to_string();
    assert_eq!(unsafe { floatlm_string_free(s) }, FloatlmStatus::Ok);
    t
}

#[test]
fn one_client_serves_several_threads_and_refuses_objects_of_the_wrong_kind() {
    let srv = server("60s");
    let client = new_client(&srv.identity) as usize;
    // Four threads race for two seats through one client.
    let results: Vec<(FloatlmStatus, FloatlmNoLicenseReason, usize)> = std::thread::scope(|s| {
        let threads: Vec<_> = (0..4)
            .map(|_| {
                s.spawn(move || {
                    let mut seat = null_mut();
                    let mut e = error();
                    let rc = unsafe {
                        floatlm_checkout(
                            client as *const _,
                            c"cad".as_ptr(),
                            10_000,
                            &mut seat,
                            &mut *e,
                        )
                    };
                    (rc, e.reason, seat as usize)
                })
            })
            .collect();
        threads.into_iter().map(|t| t.join().unwrap()).collect()
    });
    let seats: Vec<*mut FloatlmSeat> = results
        .iter()
        .filter(|r| r.0 == FloatlmStatus::Ok)
        .map(|r| r.2 as *mut FloatlmSeat)
        .collect();
    assert_eq!(seats.len(), 2, "{results:?}");
    for r in results.iter().filter(|r| r.0 != FloatlmStatus::Ok) {
        assert_eq!(
            (r.0, r.1, r.2),
            (
                FloatlmStatus::NoLicense,
                FloatlmNoLicenseReason::AllSeatsTaken,
                0
            ),
            "{results:?}"
        );
    }
    let mut e = error();
    unsafe {
        // Live objects of the wrong kind.
        let mut out = null_mut();
        let rc = floatlm_checkout(
            seats[0] as *const FloatlmClient,
            c"cad".as_ptr(),
            1000,
            &mut out,
            &mut *e,
        );
        assert_eq!(rc, FloatlmStatus::InvalidArgument, "{}", text(&e));
        assert!(text(&e).contains("not a client"), "{}", text(&e));
        let mut st = FloatlmSeatState::Held;
        let rc = floatlm_seat_state(client as *const FloatlmSeat, &mut st, &mut *e);
        assert_eq!(rc, FloatlmStatus::InvalidArgument, "{}", text(&e));
        assert_eq!(
            floatlm_seat_free(client as *mut FloatlmSeat),
            FloatlmStatus::InvalidArgument
        );
        assert_eq!(
            floatlm_client_free(seats[0] as *mut FloatlmClient),
            FloatlmStatus::InvalidArgument
        );
        // An empty feature and a zero timeout are refused before sending.
        let rc = floatlm_checkout(client as *const _, c"".as_ptr(), 1000, &mut out, &mut *e);
        assert_eq!(rc, FloatlmStatus::InvalidArgument);
        let rc = floatlm_checkout(client as *const _, c"cad".as_ptr(), 0, &mut out, &mut *e);
        assert_eq!(rc, FloatlmStatus::InvalidArgument);
        let rc = floatlm_checkout(client as *const _, null(), 1000, &mut out, &mut *e);
        assert_eq!(rc, FloatlmStatus::InvalidArgument);
        assert!(text(&e).contains("feature is NULL"), "{}", text(&e));
        let rc = floatlm_checkout(
            client as *const _,
            c"\xff".as_ptr(),
            1000,
            &mut out,
            &mut *e,
        );
        assert_eq!(rc, FloatlmStatus::InvalidArgument);
        assert!(text(&e).contains("not UTF-8"), "{}", text(&e));
        let rc = floatlm_seat_release(seats[0], 0, &mut *e);
        assert_eq!(rc, FloatlmStatus::InvalidArgument, "a zero timeout");
        // A NULL callback removes the registration.
        let rc = floatlm_seat_on_loss(seats[0], None, null_mut(), &mut *e);
        assert_eq!(rc, FloatlmStatus::Ok);
        // An unknown feature is a refusal with its reason.
        let rc = floatlm_checkout(
            client as *const _,
            c"nosuch".as_ptr(),
            10_000,
            &mut out,
            &mut *e,
        );
        assert_eq!(
            (rc, e.reason),
            (
                FloatlmStatus::NoLicense,
                FloatlmNoLicenseReason::UnknownFeature
            )
        );
        assert!(out.is_null());

        // Both seats are held, with a promise ahead of them.
        for &seat in &seats {
            assert_eq!(state(seat), FloatlmSeatState::Held);
            let mut ms = 0;
            assert_eq!(
                floatlm_seat_valid_for_ms(seat, &mut ms, &mut *e),
                FloatlmStatus::Ok
            );
            assert!(
                (50_000..=60_000).contains(&ms),
                "valid for {ms} ms of a 60 s TTL"
            );
            let mut unix = 0;
            assert_eq!(
                floatlm_seat_valid_until_unix_ms(seat, &mut unix, &mut *e),
                FloatlmStatus::Ok
            );
            let now = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap()
                .as_millis() as u64;
            assert!(
                unix > now + 50_000 && unix <= now + 60_000,
                "{unix} vs now {now}"
            );
            let mut s = null_mut();
            assert_eq!(
                floatlm_seat_feature(seat, &mut s, &mut *e),
                FloatlmStatus::Ok
            );
            assert_eq!(take_string(s), FEATURE);
            assert_eq!(floatlm_seat_lease(seat, &mut s, &mut *e), FloatlmStatus::Ok);
            assert!(!take_string(s).is_empty());
            assert_eq!(
                floatlm_seat_loss_reason(seat, &mut s, &mut *e),
                FloatlmStatus::Ok
            );
            assert!(s.is_null(), "no loss reason while held");
        }
        // A seat outlives its client: free the client first.
        assert_eq!(
            floatlm_client_free(client as *mut FloatlmClient),
            FloatlmStatus::Ok
        );
        assert_eq!(state(seats[0]), FloatlmSeatState::Held);
        // Two threads release the same seat at once: both succeed, once.
        let s0 = seats[0] as usize;
        std::thread::scope(|s| {
            for _ in 0..2 {
                s.spawn(move || {
                    let mut e = error();
                    let rc = floatlm_seat_release(s0 as *mut FloatlmSeat, 10_000, &mut *e);
                    assert_eq!(rc, FloatlmStatus::Ok, "{}", text(&e));
                });
            }
        });
        assert_eq!(state(seats[0]), FloatlmSeatState::Released);
        let mut ms = 1;
        assert_eq!(
            floatlm_seat_valid_for_ms(seats[0], &mut ms, &mut *e),
            FloatlmStatus::Ok
        );
        assert_eq!(ms, 0);
        assert_eq!(used(&srv.identity), 1);
        // Freeing a held seat releases it.
        assert_eq!(floatlm_seat_free(seats[1]), FloatlmStatus::Ok);
        assert_eq!(floatlm_seat_free(seats[0]), FloatlmStatus::Ok);
    }
    assert_eq!(used(&srv.identity), 0);
}

/// What the loss callbacks saw.
#[derive(Default)]
struct Seen {
    client: usize,
    calls: Mutex<Vec<Call>>,
    cv: Condvar,
}

#[derive(Debug, Clone)]
struct Call {
    tag: usize,
    reason: String,
    thread: String,
    state: FloatlmSeatState,
    checkout: FloatlmStatus,
}

struct Registration {
    seen: *const Seen,
    tag: usize,
}

unsafe extern "C" fn on_loss(
    seat: *const FloatlmSeat,
    reason: *const c_char,
    user_data: *mut c_void,
) {
    let reg = &*(user_data as *const Registration);
    let seen = &*reg.seen;
    let mut st = FloatlmSeatState::Held;
    floatlm_seat_state(seat, &mut st, null_mut());
    // A blocking call from here is refused, not deadlocked.
    let mut out = null_mut();
    let checkout = floatlm_checkout(
        seen.client as *const _,
        c"cad".as_ptr(),
        1000,
        &mut out,
        null_mut(),
    );
    seen.calls.lock().unwrap().push(Call {
        tag: reg.tag,
        reason: CStr::from_ptr(reason).to_string_lossy().into_owned(),
        thread: std::thread::current().name().unwrap_or("").to_string(),
        state: st,
        checkout,
    });
    seen.cv.notify_all();
}

fn wait_calls(seen: &Seen, n: usize) -> Vec<Call> {
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut calls = seen.calls.lock().unwrap();
    while calls.len() < n {
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(
            !left.is_zero(),
            "{n} loss callbacks expected within 20 s, got {calls:?}"
        );
        calls = seen.cv.wait_timeout(calls, left).unwrap().0;
    }
    calls.clone()
}

#[test]
fn a_client_made_from_the_client_file_checks_out_and_a_bad_file_is_a_config_error() {
    let srv = server("60s");
    let dir = srv.dir.path();
    let good = dir.join("client.ini");
    std::fs::write(
        &good,
        format!("[client]\nidentity = {}\nretry_count = 3\n", srv.identity),
    )
    .unwrap();
    let path = CString::new(good.to_str().unwrap()).unwrap();
    let mut client = null_mut();
    let mut e = error();
    let rc = unsafe { floatlm_client_new_from_config(path.as_ptr(), null(), &mut client, &mut *e) };
    assert_eq!(rc, FloatlmStatus::Ok, "{}", text(&e));
    let mut seat = null_mut();
    let rc = unsafe { floatlm_checkout(client, c"cad".as_ptr(), 10_000, &mut seat, &mut *e) };
    assert_eq!(rc, FloatlmStatus::Ok, "{}", text(&e));
    assert_eq!(used(&srv.identity), 1);
    unsafe {
        assert_eq!(
            floatlm_seat_release(seat, 10_000, &mut *e),
            FloatlmStatus::Ok,
            "{}",
            text(&e)
        );
        assert_eq!(floatlm_seat_free(seat), FloatlmStatus::Ok);
        assert_eq!(floatlm_client_free(client), FloatlmStatus::Ok);
    }
    assert_eq!(used(&srv.identity), 0);

    // A malformed file and a missing one: CONFIG, naming the file.
    let bad = dir.join("bad.ini");
    std::fs::write(&bad, "[client]\nretry_count = many\n").unwrap();
    for p in [bad, dir.join("missing.ini")] {
        let path = CString::new(p.to_str().unwrap()).unwrap();
        let mut client = null_mut();
        let rc =
            unsafe { floatlm_client_new_from_config(path.as_ptr(), null(), &mut client, &mut *e) };
        assert_eq!(rc, FloatlmStatus::Config, "{}", text(&e));
        assert!(client.is_null());
        assert!(
            text(&e).contains(p.file_name().unwrap().to_str().unwrap()),
            "{}",
            text(&e)
        );
    }
}

#[test]
fn the_loss_callback_runs_on_a_library_thread_when_an_operator_releases_the_seat() {
    // The shortest TTL (5 s): a heartbeat every 1.7 s notices the release.
    let srv = server("5s");
    let client = new_client(&srv.identity);
    let seen = Seen {
        client: client as usize,
        ..Seen::default()
    };
    let first = Registration {
        seen: &seen,
        tag: 1,
    };
    let second = Registration {
        seen: &seen,
        tag: 2,
    };
    let mut e = error();
    unsafe {
        let mut seat = null_mut();
        let rc = floatlm_checkout(client, c"cad".as_ptr(), 10_000, &mut seat, &mut *e);
        assert_eq!(rc, FloatlmStatus::Ok, "{}", text(&e));
        let rc = floatlm_seat_on_loss(
            seat,
            Some(on_loss),
            &first as *const _ as *mut c_void,
            &mut *e,
        );
        assert_eq!(rc, FloatlmStatus::Ok);
        let mut s = null_mut();
        floatlm_seat_lease(seat, &mut s, &mut *e);
        let lease = take_string(s);
        admin_cli(&srv.proc, &["lease", "release", &lease]);

        let calls = wait_calls(&seen, 1);
        let c = &calls[0];
        assert_eq!(c.tag, 1);
        assert!(c.reason.contains("released by an operator"), "{c:?}");
        assert_eq!(
            c.thread, "floatlm-client",
            "called on a library thread: {c:?}"
        );
        assert_eq!(c.state, FloatlmSeatState::Lost, "{c:?}");
        assert_eq!(c.checkout, FloatlmStatus::InCallback, "{c:?}");

        assert_eq!(state(seat), FloatlmSeatState::Lost);
        let mut ms = 1;
        assert_eq!(
            floatlm_seat_valid_for_ms(seat, &mut ms, &mut *e),
            FloatlmStatus::Ok
        );
        assert_eq!(ms, 0, "a lost seat's promise is over");
        assert_eq!(
            floatlm_seat_loss_reason(seat, &mut s, &mut *e),
            FloatlmStatus::Ok
        );
        assert_eq!(take_string(s), c.reason);
        // Registered on a seat already lost: called at once, on a library thread.
        let rc = floatlm_seat_on_loss(
            seat,
            Some(on_loss),
            &second as *const _ as *mut c_void,
            &mut *e,
        );
        assert_eq!(rc, FloatlmStatus::Ok);
        let calls = wait_calls(&seen, 2);
        assert_eq!(
            (calls[1].tag, calls[1].thread.as_str()),
            (2, "floatlm-client")
        );
        // Releasing a lost seat is fine (nothing to free on the server).
        assert_eq!(
            floatlm_seat_release(seat, 10_000, &mut *e),
            FloatlmStatus::Ok,
            "{}",
            text(&e)
        );
        assert_eq!(floatlm_seat_free(seat), FloatlmStatus::Ok);
        assert_eq!(floatlm_client_free(client), FloatlmStatus::Ok);
    }
    assert_eq!(
        seen.calls.lock().unwrap().len(),
        2,
        "each callback ran once"
    );
    // The operator's release frees the slot once the last promise made for
    // the lease has run out (docs/operations.md): within the TTL and a second.
    let deadline = Instant::now() + Duration::from_secs(10);
    while used(&srv.identity) != 0 {
        assert!(
            Instant::now() < deadline,
            "the seat was not free 10 s after the release"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn a_checkout_that_times_out_leaves_no_seat_held() {
    let srv = server("60s");
    let client = new_client(&srv.identity);
    let mut e = error();
    unsafe {
        // The server stops answering (SIGSTOP): the checkout's own timeout ends it.
        srv.proc.signal(libc::SIGSTOP);
        let mut seat = null_mut();
        let started = Instant::now();
        let rc = floatlm_checkout(client, c"cad".as_ptr(), 300, &mut seat, &mut *e);
        let took = started.elapsed();
        srv.proc.signal(libc::SIGCONT);
        assert_eq!(rc, FloatlmStatus::Timeout, "{}", text(&e));
        assert!(seat.is_null());
        assert!(text(&e).contains("300 ms"), "{}", text(&e));
        assert!(took < Duration::from_secs(2), "returned after {took:?}");
        // The request goes on; a seat it was granted is given back at once,
        // so both seats can be checked out again well before a lease's 60 s.
        let deadline = Instant::now() + Duration::from_secs(15);
        let mut seats = Vec::new();
        while seats.len() < 2 {
            let mut seat = null_mut();
            let rc = floatlm_checkout(client, c"cad".as_ptr(), 10_000, &mut seat, &mut *e);
            match rc {
                FloatlmStatus::Ok => seats.push(seat),
                FloatlmStatus::NoLicense if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(200))
                }
                other => panic!("checkout after the timeout: {other:?} {}", text(&e)),
            }
        }
        // Lease ids are FEATURE.SLOT.GENERATION.RANDOM: one slot is on its
        // second grant, so the timed-out checkout was granted, and given back.
        let mut generations = Vec::new();
        for seat in seats {
            let mut s = null_mut();
            assert_eq!(floatlm_seat_lease(seat, &mut s, &mut *e), FloatlmStatus::Ok);
            let lease = take_string(s);
            generations.push(lease.split('.').nth(2).unwrap().parse::<u64>().unwrap());
            assert_eq!(floatlm_seat_free(seat), FloatlmStatus::Ok);
        }
        generations.sort();
        assert_eq!(generations, [1, 2], "the slots' grant generations");
        assert_eq!(floatlm_client_free(client), FloatlmStatus::Ok);
    }
    assert_eq!(used(&srv.identity), 0);
}
