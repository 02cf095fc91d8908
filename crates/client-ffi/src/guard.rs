//! The boundary's safety net: every exported function runs inside [`ffi`]
//! (panics caught and turned into `FLOATLM_STATUS_INTERNAL`), checks its
//! pointers and strings here, and owns its runtime through [`Rt`].

use std::any::Any;
use std::ffi::{c_char, CStr};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::time::Duration;

use crate::error::{fill, Failure, FloatlmError, FloatlmNoLicenseReason, FloatlmStatus};

/// Runs `f`, fills `err` with its outcome and returns its code. A panic
/// inside `f` never crosses into C: it becomes `FLOATLM_STATUS_INTERNAL`.
///
/// # Safety
/// `err` is NULL or points to writable memory of a `FloatlmError`.
pub(crate) unsafe fn ffi(
    err: *mut FloatlmError,
    f: impl FnOnce() -> Result<(), Failure>,
) -> FloatlmStatus {
    let failure = match catch_unwind(AssertUnwindSafe(f)) {
        Ok(Ok(())) => {
            fill(err, FloatlmStatus::Ok, FloatlmNoLicenseReason::None, "");
            return FloatlmStatus::Ok;
        }
        Ok(Err(failure)) => failure,
        Err(panic) => Failure::new(
            FloatlmStatus::Internal,
            format!(
                "internal error in the floatlm library (please report it): {}",
                panic_text(&*panic)
            ),
        ),
    };
    // Filling in the error must not panic either (it cannot, but the
    // boundary is no place to find out).
    let _ = catch_unwind(AssertUnwindSafe(|| {
        fill(err, failure.code, failure.reason, &failure.message)
    }));
    failure.code
}

fn panic_text(p: &(dyn Any + Send)) -> &str {
    p.downcast_ref::<&str>()
        .copied()
        .or_else(|| p.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("a panic")
}

/// An object handed to C: `magic` first, so that a pointer to another kind
/// of object (or to a freed one, usually) is told apart from this kind.
#[repr(C)]
pub(crate) struct Tagged<T> {
    pub magic: u64,
    pub inner: T,
}

/// Written over `magic` when an object is freed.
pub(crate) const DEAD: u64 = 0xdead_dead_dead_dead;

/// Turns a pointer from C into a reference to the `T` behind it, checking
/// what can be checked: NULL, alignment, and the object's magic number.
///
/// # Safety
/// `p` is NULL, or points to at least 8 readable bytes (any object this
/// library handed out, live or just freed, qualifies in practice).
pub(crate) unsafe fn object<'a, T>(
    p: *const Tagged<T>,
    magic: u64,
    what: &str,
) -> Result<&'a T, Failure> {
    if p.is_null() {
        return Err(Failure::invalid(format!("{what} is NULL")));
    }
    if (p as usize) % std::mem::align_of::<Tagged<T>>() != 0 {
        return Err(Failure::invalid(format!(
            "{what} is not a pointer this library handed out (misaligned)"
        )));
    }
    let found = std::ptr::addr_of!((*p).magic).read_volatile();
    if found == DEAD {
        return Err(Failure::invalid(format!("{what} was already freed")));
    }
    if found != magic {
        return Err(Failure::invalid(format!(
            "{what} is not a {what} this library handed out (another kind of object, or freed)"
        )));
    }
    Ok(&(*p).inner)
}

/// A NUL-terminated UTF-8 string argument.
///
/// # Safety
/// `s` is NULL or points to a NUL-terminated string.
pub(crate) unsafe fn text<'a>(s: *const c_char, what: &str) -> Result<&'a str, Failure> {
    if s.is_null() {
        return Err(Failure::invalid(format!("{what} is NULL")));
    }
    CStr::from_ptr(s)
        .to_str()
        .map_err(|_| Failure::invalid(format!("{what} is not UTF-8 text")))
}

/// Checks that an out-parameter can be written and clears it.
///
/// # Safety
/// `out` is NULL or points to writable memory of a `T`.
pub(crate) unsafe fn out<'a, T>(out: *mut T, what: &str, empty: T) -> Result<&'a mut T, Failure> {
    if out.is_null() {
        return Err(Failure::invalid(format!(
            "{what} (the out-parameter) is NULL"
        )));
    }
    if (out as usize) % std::mem::align_of::<T>() != 0 {
        return Err(Failure::invalid(format!(
            "{what} (the out-parameter) is misaligned"
        )));
    }
    out.write(empty);
    Ok(&mut *out)
}

/// A timeout argument in milliseconds: at least 1.
pub(crate) fn timeout(ms: u32, what: &str) -> Result<Duration, Failure> {
    if ms == 0 {
        return Err(Failure::invalid(format!(
            "{what} is 0 ms: give the longest wait the call may take, in milliseconds"
        )));
    }
    Ok(Duration::from_millis(ms.into()))
}

/// Whether this thread is one of the library's own (a loss callback runs on
/// one): blocking on the runtime from there could wait for itself.
pub(crate) fn on_library_thread() -> bool {
    tokio::runtime::Handle::try_current().is_ok()
}

/// Refuses blocking calls on the library's own threads.
pub(crate) fn not_in_callback(what: &str) -> Result<(), Failure> {
    if on_library_thread() {
        return Err(Failure::new(
            FloatlmStatus::InCallback,
            format!(
                "{what} blocks and cannot be called from a loss callback (a library thread): \
                 signal one of your own threads instead"
            ),
        ));
    }
    Ok(())
}

/// The tokio runtime a client owns (and its seats share): one worker thread
/// for the heartbeats and requests, plus tokio's pool for loss callbacks.
pub(crate) struct Rt(Option<tokio::runtime::Runtime>);

impl Rt {
    pub fn new() -> Result<Rt, Failure> {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("floatlm-client")
            .enable_all()
            .build()
            .map(|rt| Rt(Some(rt)))
            .map_err(|e| {
                Failure::new(
                    FloatlmStatus::Internal,
                    format!("cannot start the client's runtime threads: {e}"),
                )
            })
    }

    pub fn get(&self) -> &tokio::runtime::Runtime {
        // Only Drop takes it out.
        self.0.as_ref().expect("runtime present until dropped")
    }
}

impl Drop for Rt {
    fn drop(&mut self) {
        if let Some(rt) = self.0.take() {
            if on_library_thread() {
                // Cannot wait for its own threads from one of them.
                rt.shutdown_background();
            } else {
                // Loss callbacks still running get this long to return.
                rt.shutdown_timeout(Duration::from_secs(5));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_panic_becomes_an_internal_error_with_its_message() {
        let mut e = std::mem::MaybeUninit::<FloatlmError>::uninit();
        let rc = unsafe { ffi(e.as_mut_ptr(), || panic!("boom in the library")) };
        assert_eq!(rc, FloatlmStatus::Internal);
        let e = unsafe { e.assume_init() };
        assert_eq!(e.code, FloatlmStatus::Internal);
        let text = unsafe { CStr::from_ptr(e.message.as_ptr()) }
            .to_str()
            .unwrap();
        assert!(text.contains("boom in the library"), "{text}");
    }

    #[test]
    fn a_refusal_on_a_library_thread_says_so() {
        let rt = Rt::new().unwrap();
        let f = rt
            .get()
            .block_on(async { tokio::task::spawn_blocking(|| not_in_callback("x")).await })
            .unwrap();
        assert_eq!(f.unwrap_err().code, FloatlmStatus::InCallback);
        assert!(not_in_callback("x").is_ok());
    }
}
