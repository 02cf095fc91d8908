//! Every exported function called with NULL and invalid arguments (no server
//! needed): each returns an error code and fills the error struct, none
//! crashes. Calls go through the extern "C" functions themselves.
//! tests/client_c.rs (root package) does the same with live objects of the
//! wrong kind, against a real server.

use std::ffi::{c_char, c_void, CStr};
use std::ptr::{null, null_mut};

use floatlm_client_ffi::*;

const INVALID: FloatlmStatus = FloatlmStatus::InvalidArgument;

fn new_err() -> Box<FloatlmError> {
    // Garbage on purpose: the library must not rely on it being zeroed.
    let mut e: Box<FloatlmError> = Box::new(unsafe { std::mem::zeroed() });
    e.message.iter_mut().for_each(|b| *b = b'x' as c_char);
    e
}

fn message(e: &FloatlmError) -> String {
    unsafe { CStr::from_ptr(e.message.as_ptr()) }
        .to_str()
        .expect("UTF-8 message")
        .to_string()
}

/// Asserts `got` is `want`, that the error struct says so, and that its
/// message mentions `mentions`.
#[track_caller]
fn check(got: FloatlmStatus, e: &FloatlmError, want: FloatlmStatus, mentions: &str) {
    assert_eq!(got, want, "{}", message(e));
    assert_eq!(e.code, want);
    assert_eq!(e.reason, FloatlmNoLicenseReason::None);
    assert!(
        message(e).contains(mentions),
        "the message {:?} should mention {mentions:?}",
        message(e)
    );
}

/// Memory that is not one of the library's objects: zeros, a freed
/// object's mark, and a pointer into the middle (misaligned).
struct Fakes {
    zeros: Box<[u64; 32]>,
    dead: Box<[u64; 32]>,
}

impl Fakes {
    fn new() -> Fakes {
        let mut dead = Box::new([0u64; 32]);
        dead[0] = 0xdead_dead_dead_dead;
        Fakes {
            zeros: Box::new([0; 32]),
            dead,
        }
    }
    fn foreign<T>(&self) -> *mut T {
        self.zeros.as_ptr() as *mut T
    }
    fn freed<T>(&self) -> *mut T {
        self.dead.as_ptr() as *mut T
    }
    fn misaligned<T>(&self) -> *mut T {
        (self.zeros.as_ptr() as *const u8).wrapping_add(1) as *mut T
    }
    /// (pointer, what the message must mention) for each kind of bad pointer.
    fn bad<T>(&self) -> [(*mut T, &'static str); 4] {
        [
            (null_mut(), "is NULL"),
            (self.foreign(), "this library handed out"),
            (self.freed(), "already freed"),
            (self.misaligned(), "misaligned"),
        ]
    }
}

const NOT_UTF8: &[u8] = b"\xff\xfe\0";

fn s(text: &CStr) -> *const c_char {
    text.as_ptr()
}

#[test]
fn creating_a_client_with_bad_arguments_is_refused_with_an_error_code() {
    let f = Fakes::new();
    let mut e = new_err();
    let mut client: *mut FloatlmClient = f.foreign(); // must be cleared
    let id = c"0011aabb:secret@127.0.0.1:1";
    unsafe {
        let rc = floatlm_client_new(null(), null(), &mut client, &mut *e);
        check(rc, &e, INVALID, "identity is NULL");
        assert!(client.is_null(), "*out is NULL after a failure");
        let rc = floatlm_client_new(NOT_UTF8.as_ptr().cast(), null(), &mut client, &mut *e);
        check(rc, &e, INVALID, "not UTF-8");
        for bad in [
            c"",
            c" , ",
            c"nonsense",
            c"id:@host:1",
            c"id:secret@host",
            c"i-d:s@h:1",
        ] {
            let rc = floatlm_client_new(s(bad), null(), &mut client, &mut *e);
            check(rc, &e, INVALID, "");
            assert!(!message(&e).is_empty(), "{bad:?} is refused with a message");
        }
        let rc = floatlm_client_new(s(id), null(), null_mut(), &mut *e);
        check(rc, &e, INVALID, "out");
        let rc = floatlm_client_new(s(id), null(), f.misaligned(), &mut *e);
        check(rc, &e, INVALID, "misaligned");
        let rc = floatlm_client_new(s(id), f.misaligned(), &mut client, &mut *e);
        check(rc, &e, INVALID, "options is misaligned");
        // Zero timeouts: refused before anything is sent.
        for field in 0..3 {
            let mut o = floatlm_options_default();
            match field {
                0 => o.request_timeout_ms = 0,
                1 => o.hedge_delay_ms = 0,
                _ => o.retry_interval_ms = 0,
            }
            let rc = floatlm_client_new(s(id), &o, &mut client, &mut *e);
            check(rc, &e, INVALID, "0 ms");
        }
        // Without an error struct the code still comes back.
        assert_eq!(
            floatlm_client_new(null(), null(), &mut client, null_mut()),
            INVALID
        );
        // A misaligned error struct is not written to, and does not crash.
        assert_eq!(
            floatlm_client_new(null(), null(), &mut client, f.misaligned()),
            INVALID
        );

        // The client file: a bad path pointer, no out, a file that is not there.
        let rc =
            floatlm_client_new_from_config(NOT_UTF8.as_ptr().cast(), null(), &mut client, &mut *e);
        check(rc, &e, INVALID, "not UTF-8");
        let rc = floatlm_client_new_from_config(
            s(c"/nonexistent/client.ini"),
            null(),
            null_mut(),
            &mut *e,
        );
        check(rc, &e, INVALID, "out");
        let rc = floatlm_client_new_from_config(
            s(c"/nonexistent/client.ini"),
            null(),
            &mut client,
            &mut *e,
        );
        check(rc, &e, FloatlmStatus::Config, "/nonexistent/client.ini");
        assert!(client.is_null());

        // A well-formed identity string for a port nobody listens on.
        let mut o = floatlm_options_default();
        o.request_timeout_ms = 2000;
        let rc = floatlm_client_new(s(id), &o, &mut client, &mut *e);
        check(rc, &e, FloatlmStatus::Unreachable, "127.0.0.1:1");
        assert!(client.is_null());
    }
}

#[test]
fn creating_a_client_from_a_server_list_with_bad_arguments_is_refused() {
    let f = Fakes::new();
    let mut e = new_err();
    let mut client: *mut FloatlmClient = null_mut();
    let cred = c"0011aabb:secret";
    let one = [s(c"127.0.0.1:1")];
    unsafe {
        let rc = floatlm_client_new_servers(null(), one.as_ptr(), 1, null(), &mut client, &mut *e);
        check(rc, &e, INVALID, "credential is NULL");
        let rc = floatlm_client_new_servers(s(cred), null(), 1, null(), &mut client, &mut *e);
        check(rc, &e, INVALID, "servers is NULL");
        let rc =
            floatlm_client_new_servers(s(cred), f.misaligned(), 1, null(), &mut client, &mut *e);
        check(rc, &e, INVALID, "servers is misaligned");
        for count in [0, 65, usize::MAX] {
            let rc = floatlm_client_new_servers(
                s(cred),
                one.as_ptr(),
                count,
                null(),
                &mut client,
                &mut *e,
            );
            check(rc, &e, INVALID, "count");
        }
        for bad in [c"id:secret@h:1", c"nocolon"] {
            let rc =
                floatlm_client_new_servers(s(bad), one.as_ptr(), 1, null(), &mut client, &mut *e);
            check(rc, &e, INVALID, "credential must be ID:SECRET");
        }
        let with_null = [s(c"127.0.0.1:1"), null()];
        let rc = floatlm_client_new_servers(
            s(cred),
            with_null.as_ptr(),
            2,
            null(),
            &mut client,
            &mut *e,
        );
        check(rc, &e, INVALID, "servers[1] is NULL");
        for bad in [c"", c"a:1,b:2"] {
            let list = [s(bad)];
            let rc =
                floatlm_client_new_servers(s(cred), list.as_ptr(), 1, null(), &mut client, &mut *e);
            check(rc, &e, INVALID, "servers[0]");
        }
        let bad_utf8 = [NOT_UTF8.as_ptr().cast::<c_char>()];
        let rc =
            floatlm_client_new_servers(s(cred), bad_utf8.as_ptr(), 1, null(), &mut client, &mut *e);
        check(rc, &e, INVALID, "not UTF-8");
        let list = [s(c"no-port")];
        let rc =
            floatlm_client_new_servers(s(cred), list.as_ptr(), 1, null(), &mut client, &mut *e);
        check(rc, &e, INVALID, "HOST:PORT");
        let rc = floatlm_client_new_servers(s(cred), one.as_ptr(), 1, null(), null_mut(), &mut *e);
        check(rc, &e, INVALID, "out");
        let mut o = floatlm_options_default();
        o.request_timeout_ms = 2000;
        let rc = floatlm_client_new_servers(s(cred), one.as_ptr(), 1, &o, &mut client, &mut *e);
        check(rc, &e, FloatlmStatus::Unreachable, "127.0.0.1:1");
        assert!(client.is_null());
    }
}

#[test]
fn a_checkout_without_a_live_client_is_refused() {
    let f = Fakes::new();
    let mut e = new_err();
    let mut seat: *mut FloatlmSeat = f.foreign();
    unsafe {
        for (client, says) in f.bad::<FloatlmClient>() {
            let rc = floatlm_checkout(client, s(c"cad"), 1000, &mut seat, &mut *e);
            check(rc, &e, INVALID, says);
            assert!(seat.is_null(), "*out is NULL after a failure");
        }
        let rc = floatlm_checkout(f.foreign(), s(c"cad"), 1000, null_mut(), &mut *e);
        check(rc, &e, INVALID, "out");
        assert_eq!(
            floatlm_checkout(null(), null(), 0, null_mut(), null_mut()),
            INVALID
        );
    }
}

unsafe extern "C" fn never(_: *const FloatlmSeat, _: *const c_char, _: *mut c_void) {
    panic!("a loss callback registered on no seat was called");
}

#[test]
fn every_seat_function_refuses_what_is_not_a_live_seat() {
    let f = Fakes::new();
    let mut e = new_err();
    unsafe {
        for (seat, says) in f.bad::<FloatlmSeat>() {
            let mut state = FloatlmSeatState::Held;
            let rc = floatlm_seat_state(seat, &mut state, &mut *e);
            check(rc, &e, INVALID, says);
            let mut ms = 7u64;
            let rc = floatlm_seat_valid_for_ms(seat, &mut ms, &mut *e);
            check(rc, &e, INVALID, says);
            let rc = floatlm_seat_valid_until_unix_ms(seat, &mut ms, &mut *e);
            check(rc, &e, INVALID, says);
            for get in [
                floatlm_seat_lease,
                floatlm_seat_feature,
                floatlm_seat_loss_reason,
            ] {
                let mut out: *mut c_char = f.foreign();
                let rc = get(seat, &mut out, &mut *e);
                check(rc, &e, INVALID, says);
                assert!(out.is_null(), "*out is NULL after a failure");
            }
            let rc = floatlm_seat_on_loss(seat, Some(never), null_mut(), &mut *e);
            check(rc, &e, INVALID, says);
            let rc = floatlm_seat_release(seat, 1000, &mut *e);
            check(rc, &e, INVALID, says);
            // Freeing NULL does nothing, like free(3); anything else is refused.
            let rc = floatlm_seat_free(seat);
            assert_eq!(
                rc,
                if seat.is_null() {
                    FloatlmStatus::Ok
                } else {
                    INVALID
                }
            );
        }
        // NULL out-parameters (on a foreign seat: the out-parameter is
        // checked first, so the message names it).
        let seat: *mut FloatlmSeat = f.foreign();
        let rc = floatlm_seat_state(seat, null_mut(), &mut *e);
        check(rc, &e, INVALID, "state");
        let rc = floatlm_seat_valid_for_ms(seat, null_mut(), &mut *e);
        check(rc, &e, INVALID, "ms");
        let rc = floatlm_seat_valid_until_unix_ms(seat, null_mut(), &mut *e);
        check(rc, &e, INVALID, "unix_ms");
        for get in [
            floatlm_seat_lease,
            floatlm_seat_feature,
            floatlm_seat_loss_reason,
        ] {
            check(get(seat, null_mut(), &mut *e), &e, INVALID, "out");
            check(
                get(seat, f.misaligned(), &mut *e),
                &e,
                INVALID,
                "misaligned",
            );
        }
        let rc = floatlm_seat_state(seat, f.misaligned(), &mut *e);
        check(rc, &e, INVALID, "misaligned");
        // A zero timeout on release is refused too (checked after the seat).
        let rc = floatlm_seat_release(seat, 0, null_mut());
        assert_eq!(rc, INVALID);
    }
}

#[test]
fn freeing_and_naming_accept_what_they_can_and_refuse_the_rest() {
    let f = Fakes::new();
    unsafe {
        assert_eq!(floatlm_client_free(null_mut()), FloatlmStatus::Ok);
        assert_eq!(floatlm_client_free(f.foreign()), INVALID);
        assert_eq!(floatlm_client_free(f.freed()), INVALID);
        assert_eq!(floatlm_client_free(f.misaligned()), INVALID);
        assert_eq!(floatlm_string_free(null_mut()), FloatlmStatus::Ok);
        for code in [-1, 11, 98, 100, i32::MIN, i32::MAX] {
            let name = CStr::from_ptr(floatlm_status_name(code));
            assert_eq!(name.to_str().unwrap(), "FLOATLM_STATUS_UNKNOWN");
        }
        for reason in [-1, 8, i32::MAX] {
            let name = CStr::from_ptr(floatlm_no_license_reason_name(reason));
            assert_eq!(name.to_str().unwrap(), "FLOATLM_NO_LICENSE_REASON_UNKNOWN");
        }
        let name = CStr::from_ptr(floatlm_no_license_reason_name(1));
        assert_eq!(
            name.to_str().unwrap(),
            "FLOATLM_NO_LICENSE_REASON_ALL_SEATS_TAKEN"
        );
        let v = CStr::from_ptr(floatlm_version()).to_str().unwrap();
        assert_eq!(v, env!("CARGO_PKG_VERSION"));
        let o = floatlm_options_default();
        assert_eq!(
            (
                o.request_timeout_ms,
                o.hedge_delay_ms,
                o.retry_interval_ms,
                o.max_retries
            ),
            (5000, 500, 60000, -1)
        );
    }
}
