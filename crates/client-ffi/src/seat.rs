//! Seats: checkout with a timeout, state and promise end, the loss callback,
//! release and free; and the strings handed to C.

use std::ffi::{c_char, c_void, CString};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use floatlm_client::{HandleState, SeatHandle};

use crate::client::{client_ref, FloatlmClient};
use crate::error::{Failure, FloatlmError, FloatlmStatus};
use crate::guard::{self, ffi, Rt, Tagged, DEAD};

const SEAT_MAGIC: u64 = 0x666c_6d73_6561_7421; // "flmseat!"

/// One checked-out seat (opaque). Heartbeats keep it alive on the client's
/// runtime until it is released, lost or freed. Thread-safe. Free it with
/// `floatlm_seat_free`.
pub struct FloatlmSeat {
    _private: [u8; 0],
}

/// What a seat is doing (`floatlm_seat_state`).
#[repr(i32)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FloatlmSeatState {
    /// The seat is held: the application may use the feature.
    Held = 0,
    /// The last heartbeat failed and the library is renewing the lease
    /// through the other servers; the seat stays valid until its promise
    /// ends (`floatlm_seat_valid_for_ms`).
    Renewing = 1,
    /// The lease is gone (released by an operator, expired, the identity
    /// refused, or no server confirmed it in time): stop using the feature.
    Lost = 2,
    /// Released by `floatlm_seat_release` (or being released).
    Released = 3,
}

/// Called once when a seat is lost, with the seat, why (UTF-8 text, valid
/// only during the call) and the `user_data` given to
/// `floatlm_seat_on_loss`. Runs on one of the library's threads, never on
/// the caller's: it must return quickly and may only call the functions
/// docs/client-c.md lists as callback-safe.
pub type FloatlmLossCallback = Option<
    unsafe extern "C" fn(seat: *const FloatlmSeat, reason: *const c_char, user_data: *mut c_void),
>;

/// The C callback of a seat and what it is told.
struct LossSlot {
    /// The seat as C knows it (for the callback's first argument).
    seat: usize,
    callback: Option<(
        unsafe extern "C" fn(*const FloatlmSeat, *const c_char, *mut c_void),
        usize,
    )>,
    /// Why the seat was lost, once it was.
    reason: Option<CString>,
    /// Released or being freed: no callback any more.
    closed: bool,
}

/// The handle and when it was released (the handle is taken out then).
struct Slot {
    handle: Option<SeatHandle>,
    released_at: Option<SystemTime>,
}

pub(crate) struct SeatInner {
    rt: Arc<Rt>,
    request_timeout: Duration,
    feature: String,
    lease: String,
    slot: Mutex<Slot>,
    loss: Arc<Mutex<LossSlot>>,
}

type SeatBox = Tagged<SeatInner>;

/// Locks `m`, also after a panic elsewhere left it poisoned (the data is
/// plain state that stays consistent).
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

unsafe fn seat_ref<'a>(p: *const FloatlmSeat) -> Result<&'a SeatInner, Failure> {
    guard::object(p as *const SeatBox, SEAT_MAGIC, "seat")
}

/// Runs the C callback on a blocking-pool thread of the runtime, with the
/// slot locked: releasing or freeing the seat waits until it returned.
fn fire(loss: &Arc<Mutex<LossSlot>>, rt: &tokio::runtime::Handle) {
    let loss = loss.clone();
    rt.spawn_blocking(move || {
        let mut s = lock(&loss);
        if s.closed {
            return;
        }
        let (Some((cb, user_data)), Some(reason)) = (s.callback, s.reason.clone()) else {
            return;
        };
        s.callback = None;
        // SAFETY: the caller registered `cb` for this seat, which stays
        // allocated while this lock is held (free takes it first).
        unsafe {
            cb(
                s.seat as *const FloatlmSeat,
                reason.as_ptr(),
                user_data as *mut c_void,
            )
        };
    });
}

/// No more callbacks; waits for one that is running.
fn close(loss: &Mutex<LossSlot>) {
    let mut s = lock(loss);
    s.closed = true;
    s.callback = None;
}

/// Checks out one seat of `feature`, blocking up to `timeout_ms`
/// milliseconds (at least 1). On success `*out` is the seat and heartbeats
/// keep it alive; on failure `*out` is NULL and the code says why: a
/// refusal is `FLOATLM_STATUS_NO_LICENSE` with `err->reason` (e.g.
/// `FLOATLM_NO_LICENSE_REASON_ALL_SEATS_TAKEN`). On
/// `FLOATLM_STATUS_TIMEOUT` the checkout goes on in the background and a
/// seat it gets after all is released at once.
///
/// # Safety
/// `client` is NULL or a live client; `feature` NULL or a NUL-terminated
/// string; `out` NULL or writable; `err` NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn floatlm_checkout(
    client: *const FloatlmClient,
    feature: *const c_char,
    timeout_ms: u32,
    out: *mut *mut FloatlmSeat,
    err: *mut FloatlmError,
) -> FloatlmStatus {
    ffi(err, || {
        let out = guard::out(out, "out", std::ptr::null_mut())?;
        let c = client_ref(client)?;
        let feature = guard::text(feature, "feature")?;
        if feature.is_empty() {
            return Err(Failure::invalid("feature is empty"));
        }
        let wait = guard::timeout(timeout_ms, "timeout_ms")?;
        guard::not_in_callback("floatlm_checkout")?;
        let rt = c.rt.get();
        let client = c.client.clone();
        let name = feature.to_string();
        let mut task = rt.spawn(async move { client.checkout(&name).await });
        let handle = match rt.block_on(async { tokio::time::timeout(wait, &mut task).await }) {
            Ok(Ok(r)) => r?,
            Ok(Err(join)) => {
                return Err(Failure::new(
                    FloatlmStatus::Internal,
                    format!("the checkout task failed: {join}"),
                ))
            }
            Err(_) => {
                // A seat granted after we stopped waiting would be held by
                // nobody until its lease ran out: give it back.
                rt.spawn(async move {
                    if let Ok(Ok(h)) = task.await {
                        let _ = h.give_back().await;
                    }
                });
                return Err(Failure::new(
                    FloatlmStatus::Timeout,
                    format!(
                        "no seat of {feature} within {timeout_ms} ms (no server answered in time)"
                    ),
                ));
            }
        };
        let loss = Arc::new(Mutex::new(LossSlot {
            seat: 0,
            callback: None,
            reason: None,
            closed: false,
        }));
        let boxed = Box::new(SeatBox {
            magic: SEAT_MAGIC,
            inner: SeatInner {
                rt: c.rt.clone(),
                request_timeout: c.request_timeout,
                feature: handle.feature().to_string(),
                lease: handle.lease(),
                slot: Mutex::new(Slot {
                    handle: None,
                    released_at: None,
                }),
                loss: loss.clone(),
            },
        });
        let ptr = Box::into_raw(boxed);
        lock(&loss).seat = ptr as usize;
        let h = rt.handle().clone();
        let on_loss = loss.clone();
        handle.on_loss(move |reason| {
            lock(&on_loss).reason =
                Some(CString::new(reason.replace('\0', " ")).unwrap_or_default());
            fire(&on_loss, &h);
        });
        lock(&(*ptr).inner.slot).handle = Some(handle);
        *out = ptr as *mut FloatlmSeat;
        Ok(())
    })
}

/// Registers `callback` to be called once when the seat is lost (replacing
/// one registered before; NULL removes it). Called at once (on a library
/// thread) if the seat is already lost; never after the seat was released,
/// nor after `floatlm_seat_free` returned. `user_data` is passed through
/// untouched; it must stay valid until the callback ran or the seat was
/// released or freed.
///
/// # Safety
/// `seat` is NULL or a live seat; `err` NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn floatlm_seat_on_loss(
    seat: *mut FloatlmSeat,
    callback: FloatlmLossCallback,
    user_data: *mut c_void,
    err: *mut FloatlmError,
) -> FloatlmStatus {
    ffi(err, || {
        let s = seat_ref(seat)?;
        guard::not_in_callback("floatlm_seat_on_loss")?;
        let due = {
            let mut l = lock(&s.loss);
            l.callback = callback.map(|cb| (cb, user_data as usize));
            !l.closed && l.callback.is_some() && l.reason.is_some()
        };
        if due {
            fire(&s.loss, s.rt.get().handle());
        }
        Ok(())
    })
}

/// The seat's state: held, renewing, lost or released.
///
/// # Safety
/// `seat` is NULL or a live seat; `state` NULL or writable; `err` NULL or
/// writable.
#[no_mangle]
pub unsafe extern "C" fn floatlm_seat_state(
    seat: *const FloatlmSeat,
    state: *mut FloatlmSeatState,
    err: *mut FloatlmError,
) -> FloatlmStatus {
    ffi(err, || {
        let state = guard::out(state, "state", FloatlmSeatState::Released)?;
        let s = seat_ref(seat)?;
        *state = match lock(&s.slot).handle.as_ref().map(SeatHandle::state) {
            None | Some(HandleState::Released) => FloatlmSeatState::Released,
            Some(HandleState::Held) => FloatlmSeatState::Held,
            Some(HandleState::Reconnecting { .. }) => FloatlmSeatState::Renewing,
            Some(HandleState::Lost { .. }) => FloatlmSeatState::Lost,
        };
        Ok(())
    })
}

/// When the seat's promise ends: (client monotonic instant, or the wall
/// clock instant of the release).
enum PromiseEnd {
    At(Instant),
    ReleasedAt(SystemTime),
}

fn promise_end(s: &SeatInner) -> PromiseEnd {
    let slot = lock(&s.slot);
    match (&slot.handle, slot.released_at) {
        (Some(h), _) => PromiseEnd::At(h.valid_until()),
        (None, Some(t)) => PromiseEnd::ReleasedAt(t),
        (None, None) => PromiseEnd::ReleasedAt(SystemTime::now()),
    }
}

/// How many milliseconds the application may still use the seat: until the
/// promise of the last answered heartbeat ends (minus a safety margin). 0
/// once the seat is lost or released. Each answered heartbeat moves it on.
///
/// # Safety
/// `seat` is NULL or a live seat; `ms` NULL or writable; `err` NULL or
/// writable.
#[no_mangle]
pub unsafe extern "C" fn floatlm_seat_valid_for_ms(
    seat: *const FloatlmSeat,
    ms: *mut u64,
    err: *mut FloatlmError,
) -> FloatlmStatus {
    ffi(err, || {
        let ms = guard::out(ms, "ms", 0)?;
        let s = seat_ref(seat)?;
        if let PromiseEnd::At(t) = promise_end(s) {
            let left = t.saturating_duration_since(Instant::now()).as_millis();
            *ms = u64::try_from(left).unwrap_or(u64::MAX);
        }
        Ok(())
    })
}

/// The same instant as `floatlm_seat_valid_for_ms`, as Unix time in
/// milliseconds by this machine's clock (the moment of the loss or release
/// once the seat is lost or released). Prefer `floatlm_seat_valid_for_ms`
/// for decisions: it does not move when the wall clock is set.
///
/// # Safety
/// `seat` is NULL or a live seat; `unix_ms` NULL or writable; `err` NULL or
/// writable.
#[no_mangle]
pub unsafe extern "C" fn floatlm_seat_valid_until_unix_ms(
    seat: *const FloatlmSeat,
    unix_ms: *mut u64,
    err: *mut FloatlmError,
) -> FloatlmStatus {
    ffi(err, || {
        let unix_ms = guard::out(unix_ms, "unix_ms", 0)?;
        let s = seat_ref(seat)?;
        let (now_i, now_s) = (Instant::now(), SystemTime::now());
        let at = match promise_end(s) {
            PromiseEnd::At(t) if t >= now_i => now_s + (t - now_i),
            PromiseEnd::At(t) => now_s - (now_i - t),
            PromiseEnd::ReleasedAt(t) => t,
        };
        let ms = at
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_millis();
        *unix_ms = u64::try_from(ms).unwrap_or(u64::MAX);
        Ok(())
    })
}

fn c_string(s: &str) -> *mut c_char {
    CString::new(s.replace('\0', " "))
        .unwrap_or_default()
        .into_raw()
}

/// The server's lease id of the seat (opaque text, for logs and for
/// operators). `*out` must be freed with `floatlm_string_free`.
///
/// # Safety
/// `seat` is NULL or a live seat; `out` NULL or writable; `err` NULL or
/// writable.
#[no_mangle]
pub unsafe extern "C" fn floatlm_seat_lease(
    seat: *const FloatlmSeat,
    out: *mut *mut c_char,
    err: *mut FloatlmError,
) -> FloatlmStatus {
    ffi(err, || {
        let out = guard::out(out, "out", std::ptr::null_mut())?;
        let s = seat_ref(seat)?;
        *out = c_string(&s.lease);
        Ok(())
    })
}

/// The feature the seat is of. `*out` must be freed with
/// `floatlm_string_free`.
///
/// # Safety
/// As `floatlm_seat_lease`.
#[no_mangle]
pub unsafe extern "C" fn floatlm_seat_feature(
    seat: *const FloatlmSeat,
    out: *mut *mut c_char,
    err: *mut FloatlmError,
) -> FloatlmStatus {
    ffi(err, || {
        let out = guard::out(out, "out", std::ptr::null_mut())?;
        let s = seat_ref(seat)?;
        *out = c_string(&s.feature);
        Ok(())
    })
}

/// Why the seat was lost, as text; `*out` is NULL while it is not lost.
/// A non-NULL `*out` must be freed with `floatlm_string_free`.
///
/// # Safety
/// As `floatlm_seat_lease`.
#[no_mangle]
pub unsafe extern "C" fn floatlm_seat_loss_reason(
    seat: *const FloatlmSeat,
    out: *mut *mut c_char,
    err: *mut FloatlmError,
) -> FloatlmStatus {
    ffi(err, || {
        let out = guard::out(out, "out", std::ptr::null_mut())?;
        let s = seat_ref(seat)?;
        if let Some(reason) = lock(&s.slot).handle.as_ref().and_then(SeatHandle::loss) {
            *out = c_string(&reason.to_string());
        }
        Ok(())
    })
}

/// Gives `handle` back, waiting up to `wait` for a server's answer; the
/// logout goes on in the background after that.
fn give_back(rt: &Rt, handle: SeatHandle, wait: Duration) -> Result<(), Failure> {
    let rt = rt.get();
    let task = rt.spawn(handle.give_back());
    match rt.block_on(async { tokio::time::timeout(wait, task).await }) {
        Ok(Ok(Ok(_))) => Ok(()),
        Ok(Ok(Err(e))) => Err(e.into()),
        Ok(Err(join)) => Err(Failure::new(
            FloatlmStatus::Internal,
            format!("the release task failed: {join}"),
        )),
        Err(_) => Err(Failure::new(
            FloatlmStatus::Timeout,
            format!(
                "no server confirmed the release within {} ms; it goes on in the background \
                 (and the seat frees itself when its lease runs out)",
                wait.as_millis()
            ),
        )),
    }
}

/// Releases the seat, blocking up to `timeout_ms` (at least 1) for the
/// server's answer. `FLOATLM_STATUS_OK` when the seat is free now (released,
/// or it had already ended, or it was released before). The loss callback
/// is not called after this returns. The seat stays allocated (its state
/// is `FLOATLM_SEAT_STATE_RELEASED`) until `floatlm_seat_free`.
///
/// # Safety
/// `seat` is NULL or a live seat; `err` NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn floatlm_seat_release(
    seat: *mut FloatlmSeat,
    timeout_ms: u32,
    err: *mut FloatlmError,
) -> FloatlmStatus {
    ffi(err, || {
        let s = seat_ref(seat)?;
        let wait = guard::timeout(timeout_ms, "timeout_ms")?;
        guard::not_in_callback("floatlm_seat_release")?;
        close(&s.loss);
        let handle = {
            let mut slot = lock(&s.slot);
            let h = slot.handle.take();
            if h.is_some() {
                slot.released_at = Some(SystemTime::now());
            }
            h
        };
        match handle {
            Some(h) => give_back(&s.rt, h, wait),
            None => Ok(()),
        }
    })
}

/// Frees a seat, releasing it first if it was not (waiting up to the
/// client's request timeout for the server). When it returns, the loss
/// callback has returned and is never called again. NULL is accepted and
/// does nothing. From inside a loss callback the free is finished on
/// another thread once the callback returned. Must not be called twice, nor
/// while another thread still uses the seat.
///
/// # Safety
/// `seat` is NULL or a pointer from `floatlm_checkout` not yet freed.
#[no_mangle]
pub unsafe extern "C" fn floatlm_seat_free(seat: *mut FloatlmSeat) -> FloatlmStatus {
    ffi(std::ptr::null_mut(), || {
        if seat.is_null() {
            return Ok(());
        }
        seat_ref(seat)?;
        let p = seat as *mut SeatBox;
        std::ptr::addr_of_mut!((*p).magic).write_volatile(DEAD);
        let boxed = Box::from_raw(p);
        let finish = move || {
            close(&boxed.inner.loss);
            let handle = lock(&boxed.inner.slot).handle.take();
            if let Some(h) = handle {
                if !matches!(h.state(), HandleState::Released) {
                    // Best effort: the seat frees itself at its lease's end
                    // when no server answers.
                    let _ = give_back(&boxed.inner.rt, h, boxed.inner.request_timeout);
                }
            }
            drop(boxed);
        };
        if guard::on_library_thread() {
            std::thread::spawn(finish);
        } else {
            finish();
        }
        Ok(())
    })
}

/// Frees a string this library returned. NULL is accepted and does nothing.
///
/// # Safety
/// `s` is NULL or a string from this library not yet freed.
#[no_mangle]
pub unsafe extern "C" fn floatlm_string_free(s: *mut c_char) -> FloatlmStatus {
    ffi(std::ptr::null_mut(), || {
        if !s.is_null() {
            drop(CString::from_raw(s));
        }
        Ok(())
    })
}
