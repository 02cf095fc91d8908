use std::fmt;

/// Why the server said "No license".
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NoLicenseReason {
    AllSeatsTaken,
    DeniedByAuthScript,
    LicenseExpired,
    UnknownFeature,
    /// The license failed the server's integrity check.
    LicenseRefused,
    /// The server assigns features per identity (`assignment = manual`) and
    /// this feature is not assigned to this identity.
    NotAssigned,
    Other(String),
}

impl NoLicenseReason {
    pub(crate) fn from_code(code: Option<&str>) -> Self {
        use floatlm_protocol::messages::reason as r;
        match code {
            Some(r::ALL_SEATS_TAKEN) => NoLicenseReason::AllSeatsTaken,
            Some(r::AUTH_DENIED) => NoLicenseReason::DeniedByAuthScript,
            Some(r::LICENSE_EXPIRED) => NoLicenseReason::LicenseExpired,
            Some(r::UNKNOWN_FEATURE) => NoLicenseReason::UnknownFeature,
            Some(r::LICENSE_REFUSED) => NoLicenseReason::LicenseRefused,
            Some(r::NOT_ASSIGNED) => NoLicenseReason::NotAssigned,
            other => NoLicenseReason::Other(other.unwrap_or("unspecified").to_string()),
        }
    }
}

impl fmt::Display for NoLicenseReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            NoLicenseReason::AllSeatsTaken => "all seats taken",
            NoLicenseReason::DeniedByAuthScript => "denied by the auth script",
            NoLicenseReason::LicenseExpired => "license expired",
            NoLicenseReason::UnknownFeature => "unknown feature",
            NoLicenseReason::LicenseRefused => "license refused by the server's integrity check",
            NoLicenseReason::NotAssigned => "feature not assigned to this identity",
            NoLicenseReason::Other(s) => s,
        })
    }
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum ClientError {
    /// The server answered and refused a seat; `message` starts with "No license".
    #[error("{message}")]
    NoLicense {
        reason: NoLicenseReason,
        message: String,
    },
    #[error("authentication failed at {server}: unknown identity or wrong secret")]
    AuthFailed { server: String },
    #[error("identity refused by {server}: {reason}")]
    IdentityRefused { server: String, reason: String },
    #[error("no license server reachable: {0}")]
    Unreachable(String),
    /// A license server answered, but its database is unavailable (and no
    /// other server did better).
    #[error("license server unavailable: {0}")]
    Unavailable(String),
    #[error("invalid identity string: {0}")]
    BadIdentity(String),
    #[error("{server} answered: {message}")]
    Server { server: String, message: String },
    /// A resent login's lease has ended (released, expired, taken over);
    /// [`crate::Client::checkout`] handles it by logging in afresh.
    #[error("{0}")]
    LeaseEnded(String),
    /// The client configuration (file, environment, `ca_file`) is unusable;
    /// the message names the file, line and key, or the variable.
    #[error("client configuration: {0}")]
    Config(String),
}
