//! Internal failures as the outside sees them.
//!
//! A database error's text names schemas, tables, columns, statements and
//! hosts; none of it may reach a client (sealed answers, plain JSON errors,
//! healthz) or an admin API answer. Such a failure is an *incident*: the
//! answer is the generic "unavailable" text with a short random incident id,
//! and this instance's log holds the detail under that id at error level, so
//! a user's report (`incident 3f9a0c…`) leads the operator to the cause.

use std::fmt;

use crate::storage::StorageError;

/// A failure whose detail went to the log; only its id goes out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Incident {
    id: String,
}

impl Incident {
    /// Logs `detail` at error level under a new incident id.
    pub fn record(what: &str, detail: &dyn fmt::Display) -> Incident {
        let id = crate::crypto::random_hex(6);
        tracing::error!(incident = %id, error = %detail, "{what}");
        Incident { id }
    }

    /// An incident already in the log under `id` (the outage the database
    /// gate recorded when it closed: requests failed fast because of it are
    /// not logged one by one at error level).
    pub fn logged(id: impl Into<String>) -> Incident {
        Incident { id: id.into() }
    }

    /// The incident of a storage failure: the gate's outage incident for a
    /// request that was not tried, a new one otherwise.
    pub fn of_storage(what: &str, e: &StorageError) -> Incident {
        match e {
            StorageError::Unavailable(id) => {
                tracing::debug!(incident = %id, "{what}: the database is known to be away");
                Incident::logged(id.clone())
            }
            other => Incident::record(what, other),
        }
    }

    pub fn id(&self) -> &str {
        &self.id
    }
}

/// What a client reads: generic text and the id, never the detail.
impl fmt::Display for Incident {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (incident {})", crate::dbgate::UNAVAILABLE, self.id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_answer_names_the_incident_but_not_the_detail() {
        let e = StorageError::Database(sqlx::Error::Protocol(
            "Incorrect string value for column `secret_schema`.`slots`.`client_info`".into(),
        ));
        let i = Incident::of_storage("a login failed", &e);
        let text = i.to_string();
        assert!(text.contains(&format!("(incident {})", i.id())), "{text}");
        assert!(
            !text.contains("secret_schema") && !text.contains("slots"),
            "{text}"
        );
        assert_eq!(i.id().len(), 12);
        // A request the gate failed fast carries the outage's incident.
        let fast = Incident::of_storage("x", &StorageError::Unavailable("0123abcd4567".into()));
        assert_eq!(fast.id(), "0123abcd4567");
    }
}
