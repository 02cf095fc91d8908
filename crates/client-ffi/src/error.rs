//! Error codes and the caller's error struct: every fallible function returns
//! a [`FloatlmStatus`] and, when given a [`FloatlmError`], fills it in.
//! There is no per-thread or global "last error": the error is where the
//! caller put it.

use std::ffi::c_char;

use floatlm_client::{ClientError, NoLicenseReason};

/// What a call did. The numbers are stable: new codes are added, existing
/// ones never change meaning. Returned by every function that can fail.
#[repr(i32)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FloatlmStatus {
    /// Success.
    Ok = 0,
    /// A NULL or invalid pointer, a string that is not UTF-8, a malformed
    /// identity string, a zero timeout, a pointer to a freed or foreign
    /// object: the caller's mistake, nothing was sent.
    InvalidArgument = 1,
    /// The server answered and refused a seat; `FloatlmError.reason` says
    /// why (all seats taken, unknown feature, ...).
    NoLicense = 2,
    /// No license server could be reached.
    Unreachable = 3,
    /// The call's own timeout passed before an answer.
    Timeout = 4,
    /// The server does not know this identity or its secret is wrong.
    AuthFailed = 5,
    /// The server refused this identity (revoked or expired).
    IdentityRefused = 6,
    /// A license server answered, but its database is unavailable.
    Unavailable = 7,
    /// A server answered something this library did not expect.
    Protocol = 8,
    /// A blocking call (create, checkout, release) was made from inside a
    /// loss callback, on one of the library's own threads.
    InCallback = 9,
    /// The client configuration (the client file, FLOATLM_* variables) is
    /// unreadable or invalid; the message names the file, line and key.
    Config = 10,
    /// A bug in this library (a caught panic) or an operating-system failure
    /// (no threads for the runtime). The message says which.
    Internal = 99,
}

/// Why a server refused a seat (`FloatlmError.reason` when the status is
/// `FLOATLM_STATUS_NO_LICENSE`; `FLOATLM_NO_LICENSE_REASON_NONE` otherwise).
#[repr(i32)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FloatlmNoLicenseReason {
    /// Not a refusal.
    None = 0,
    /// Every seat of the feature is in use.
    AllSeatsTaken = 1,
    /// The server's auth script said no.
    DeniedByAuthScript = 2,
    /// The license of the feature has expired.
    LicenseExpired = 3,
    /// No license on the server has this feature.
    UnknownFeature = 4,
    /// The license failed the server's integrity check.
    LicenseRefused = 5,
    /// Another reason; the message has the server's words.
    Other = 6,
    /// The server assigns features per identity (`assignment = manual`) and
    /// this feature is not assigned to this identity.
    NotAssigned = 7,
}

/// Room for the message in `FloatlmError`, NUL included.
pub const FLOATLM_ERROR_MESSAGE_SIZE: usize = 512;

/// Filled in by a failing call when the caller passes one (it may pass
/// NULL). Lives wherever the caller puts it (the stack, say); the library
/// keeps no pointer to it. On success `code` is `FLOATLM_STATUS_OK`,
/// `reason` `FLOATLM_NO_LICENSE_REASON_NONE` and `message` empty.
#[repr(C)]
pub struct FloatlmError {
    /// The same code the function returned.
    pub code: FloatlmStatus,
    /// Why a seat was refused, when `code` is `FLOATLM_STATUS_NO_LICENSE`.
    pub reason: FloatlmNoLicenseReason,
    /// What failed and what to do, as UTF-8 text ending in NUL; cut at a
    /// character boundary when longer than the buffer.
    pub message: [c_char; FLOATLM_ERROR_MESSAGE_SIZE],
}

/// A failure on its way to the caller.
#[derive(Debug)]
pub(crate) struct Failure {
    pub code: FloatlmStatus,
    pub reason: FloatlmNoLicenseReason,
    pub message: String,
}

impl Failure {
    pub fn new(code: FloatlmStatus, message: impl Into<String>) -> Failure {
        Failure {
            code,
            reason: FloatlmNoLicenseReason::None,
            message: message.into(),
        }
    }

    pub fn invalid(message: impl Into<String>) -> Failure {
        Failure::new(FloatlmStatus::InvalidArgument, message)
    }
}

impl From<ClientError> for Failure {
    fn from(e: ClientError) -> Failure {
        use FloatlmStatus as S;
        let message = e.to_string();
        // Exhaustive on purpose: a new ClientError must be given a code here.
        let (code, reason) = match &e {
            ClientError::NoLicense { reason, .. } => (S::NoLicense, no_license_reason(reason)),
            ClientError::AuthFailed { .. } => (S::AuthFailed, FloatlmNoLicenseReason::None),
            ClientError::IdentityRefused { .. } => {
                (S::IdentityRefused, FloatlmNoLicenseReason::None)
            }
            ClientError::Unreachable(_) => (S::Unreachable, FloatlmNoLicenseReason::None),
            ClientError::Unavailable(_) => (S::Unavailable, FloatlmNoLicenseReason::None),
            ClientError::BadIdentity(_) => (S::InvalidArgument, FloatlmNoLicenseReason::None),
            ClientError::Config(_) => (S::Config, FloatlmNoLicenseReason::None),
            ClientError::Server { .. } | ClientError::LeaseEnded(_) => {
                (S::Protocol, FloatlmNoLicenseReason::None)
            }
        };
        Failure {
            code,
            reason,
            message,
        }
    }
}

fn no_license_reason(r: &NoLicenseReason) -> FloatlmNoLicenseReason {
    match r {
        NoLicenseReason::AllSeatsTaken => FloatlmNoLicenseReason::AllSeatsTaken,
        NoLicenseReason::DeniedByAuthScript => FloatlmNoLicenseReason::DeniedByAuthScript,
        NoLicenseReason::LicenseExpired => FloatlmNoLicenseReason::LicenseExpired,
        NoLicenseReason::UnknownFeature => FloatlmNoLicenseReason::UnknownFeature,
        NoLicenseReason::LicenseRefused => FloatlmNoLicenseReason::LicenseRefused,
        NoLicenseReason::NotAssigned => FloatlmNoLicenseReason::NotAssigned,
        NoLicenseReason::Other(_) => FloatlmNoLicenseReason::Other,
    }
}

/// Fills `err` (when it is a usable pointer) with `code`, `reason`, `message`.
///
/// # Safety
/// `err` is NULL or points to writable memory of a `FloatlmError`.
pub(crate) unsafe fn fill(
    err: *mut FloatlmError,
    code: FloatlmStatus,
    reason: FloatlmNoLicenseReason,
    message: &str,
) {
    if err.is_null() || (err as usize) % std::mem::align_of::<FloatlmError>() != 0 {
        return;
    }
    let mut end = message.len().min(FLOATLM_ERROR_MESSAGE_SIZE - 1);
    while !message.is_char_boundary(end) {
        end -= 1;
    }
    // A NUL inside the text would cut it short in C: none is written.
    let bytes = message.as_bytes()[..end]
        .iter()
        .map(|&b| if b == 0 { b' ' } else { b });
    // Raw writes: the caller's struct may be uninitialised.
    std::ptr::addr_of_mut!((*err).code).write(code);
    std::ptr::addr_of_mut!((*err).reason).write(reason);
    let msg = std::ptr::addr_of_mut!((*err).message) as *mut c_char;
    for (i, b) in bytes.enumerate() {
        msg.add(i).write(b as c_char);
    }
    msg.add(end).write(0);
}

/// The name of a status code, e.g. `"FLOATLM_STATUS_NO_LICENSE"`; a static
/// string (never free it); `"FLOATLM_STATUS_UNKNOWN"` for a number that is
/// not a code.
#[no_mangle]
pub extern "C" fn floatlm_status_name(code: i32) -> *const c_char {
    let s: &'static [u8] = match code {
        0 => b"FLOATLM_STATUS_OK\0",
        1 => b"FLOATLM_STATUS_INVALID_ARGUMENT\0",
        2 => b"FLOATLM_STATUS_NO_LICENSE\0",
        3 => b"FLOATLM_STATUS_UNREACHABLE\0",
        4 => b"FLOATLM_STATUS_TIMEOUT\0",
        5 => b"FLOATLM_STATUS_AUTH_FAILED\0",
        6 => b"FLOATLM_STATUS_IDENTITY_REFUSED\0",
        7 => b"FLOATLM_STATUS_UNAVAILABLE\0",
        8 => b"FLOATLM_STATUS_PROTOCOL\0",
        9 => b"FLOATLM_STATUS_IN_CALLBACK\0",
        10 => b"FLOATLM_STATUS_CONFIG\0",
        99 => b"FLOATLM_STATUS_INTERNAL\0",
        _ => b"FLOATLM_STATUS_UNKNOWN\0",
    };
    s.as_ptr() as *const c_char
}

/// The name of a no-license reason, e.g.
/// `"FLOATLM_NO_LICENSE_REASON_ALL_SEATS_TAKEN"`; a static string;
/// `"FLOATLM_NO_LICENSE_REASON_UNKNOWN"` for a number that is not one.
#[no_mangle]
pub extern "C" fn floatlm_no_license_reason_name(reason: i32) -> *const c_char {
    let s: &'static [u8] = match reason {
        0 => b"FLOATLM_NO_LICENSE_REASON_NONE\0",
        1 => b"FLOATLM_NO_LICENSE_REASON_ALL_SEATS_TAKEN\0",
        2 => b"FLOATLM_NO_LICENSE_REASON_DENIED_BY_AUTH_SCRIPT\0",
        3 => b"FLOATLM_NO_LICENSE_REASON_LICENSE_EXPIRED\0",
        4 => b"FLOATLM_NO_LICENSE_REASON_UNKNOWN_FEATURE\0",
        5 => b"FLOATLM_NO_LICENSE_REASON_LICENSE_REFUSED\0",
        6 => b"FLOATLM_NO_LICENSE_REASON_OTHER\0",
        7 => b"FLOATLM_NO_LICENSE_REASON_NOT_ASSIGNED\0",
        _ => b"FLOATLM_NO_LICENSE_REASON_UNKNOWN\0",
    };
    s.as_ptr() as *const c_char
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_long_message_is_cut_at_a_character_boundary_and_ends_in_nul() {
        let mut e = std::mem::MaybeUninit::<FloatlmError>::uninit();
        let text = "é".repeat(400); // 800 bytes
        unsafe {
            fill(
                e.as_mut_ptr(),
                FloatlmStatus::Protocol,
                FloatlmNoLicenseReason::None,
                &text,
            );
            let e = e.assume_init();
            let s = std::ffi::CStr::from_ptr(e.message.as_ptr())
                .to_str()
                .unwrap();
            assert_eq!(s.len(), 510);
            assert_eq!(e.code, FloatlmStatus::Protocol);
        }
    }

    #[test]
    fn every_status_has_its_name() {
        for (code, name) in [
            (FloatlmStatus::Ok, "OK"),
            (FloatlmStatus::InvalidArgument, "INVALID_ARGUMENT"),
            (FloatlmStatus::NoLicense, "NO_LICENSE"),
            (FloatlmStatus::Unreachable, "UNREACHABLE"),
            (FloatlmStatus::Timeout, "TIMEOUT"),
            (FloatlmStatus::AuthFailed, "AUTH_FAILED"),
            (FloatlmStatus::IdentityRefused, "IDENTITY_REFUSED"),
            (FloatlmStatus::Unavailable, "UNAVAILABLE"),
            (FloatlmStatus::Protocol, "PROTOCOL"),
            (FloatlmStatus::InCallback, "IN_CALLBACK"),
            (FloatlmStatus::Config, "CONFIG"),
            (FloatlmStatus::Internal, "INTERNAL"),
        ] {
            let got = unsafe { std::ffi::CStr::from_ptr(floatlm_status_name(code as i32)) };
            assert_eq!(got.to_str().unwrap(), format!("FLOATLM_STATUS_{name}"));
        }
    }
}
