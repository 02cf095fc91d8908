//! Admission: who may open a protocol session on this instance, the table
//! of sessions (pending, live, ended) behind the handlers, and what the
//! server believes about a client (its address, the lease length it is
//! told). Handlers call these methods; the session table and the
//! configuration stay inside the service.

use super::*;
use crate::sessions::{Session, SessionCounts};
use std::net::{IpAddr, SocketAddr};

/// Why a new session (handshake or resumption) is refused before any key
/// work.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionRefusal {
    /// This instance is shutting down: new sessions go elsewhere.
    Draining,
    /// The session table holds its maximum (`max_sessions`).
    Full { max_sessions: usize },
}

/// What a request on an open session may do (see [`Admission::admit_request`]).
pub enum RequestAdmission {
    /// Serve it; `ticket` is the session's resumption ticket when this is
    /// its first request.
    Serve { ticket: Option<ResumeGrant> },
    /// Answer the identity's refusal, sealed; the session is gone.
    Refuse(IdentityRefusal),
    /// The live table is full (it holds `max_sessions`): 429, like a
    /// handshake would get (the client library tries its next server).
    Full { max_sessions: usize },
}

/// Who may open a protocol session here and what a request on one may do;
/// owns this instance's session table.
pub struct Admission {
    /// Protocol sessions of this instance (shared with access, which ends
    /// a revoked identity's sessions).
    sessions: Arc<Sessions>,
    config: Arc<Config>,
    clock: Arc<Clock>,
    /// A draining instance takes no new session.
    cluster: Arc<Cluster>,
    access: Arc<Access>,
    tickets: Arc<Tickets>,
}

impl Admission {
    pub(super) fn new(
        config: Arc<Config>,
        sessions: Arc<Sessions>,
        clock: Arc<Clock>,
        cluster: Arc<Cluster>,
        access: Arc<Access>,
        tickets: Arc<Tickets>,
    ) -> Admission {
        Admission {
            sessions,
            config,
            clock,
            cluster,
            access,
            tickets,
        }
    }

    /// This instance's id (named in a ServerHello).
    pub fn instance_id(&self) -> &str {
        &self.config.instance_id
    }

    /// Whether a new session may start here: not while draining (proxies
    /// retry a 503 on the next instance; existing sessions are still
    /// served), not while the session table is full.
    pub fn admit_session(&self) -> Result<(), SessionRefusal> {
        if self.cluster.is_draining() {
            return Err(SessionRefusal::Draining);
        }
        if !self.sessions.has_room() {
            return Err(SessionRefusal::Full {
                max_sessions: self.config.max_sessions,
            });
        }
        Ok(())
    }

    /// What a handshake needs of identity `id` ([`Access::identity_lookup`]:
    /// a stand-in for an unknown id) and why the identity is refused now, if
    /// it is: expiry is judged by the database clock estimate, without a
    /// round trip.
    pub async fn handshake_identity(
        &self,
        id: &str,
    ) -> Result<(Arc<Lookup>, Option<IdentityRefusal>), AppError> {
        let lookup = self.access.identity_lookup(id).await?;
        let now = self.clock.db_now();
        let refused = lookup.identity.as_ref().and_then(|i| i.refusal(now));
        Ok((lookup, refused))
    }

    /// Keeps a new session pending (not counted, no ticket) until its first
    /// request.
    pub fn insert_pending_session(&self, id: String, session: Session) {
        self.sessions.insert_pending(id, session);
    }

    /// The session `id` names, if this instance holds it (live, pending or
    /// ended with a reason).
    pub fn find_session(&self, id: &str) -> Option<Found> {
        self.sessions.get(id)
    }

    /// Ends session `id` (its identity was refused).
    pub fn end_session(&self, id: &str) {
        self.sessions.end(id);
    }

    /// Forgets every session of this instance, as a restart would (clients
    /// resume with their tickets).
    pub fn forget_sessions(&self) {
        self.sessions.clear();
    }

    /// Counts of the session table and of its admissions since start.
    pub fn session_counts(&self) -> SessionCounts {
        self.sessions.counts()
    }

    /// The lease length a ServerHello announces (`lease_ttl`), milliseconds.
    pub fn announced_lease_ttl_ms(&self) -> u64 {
        self.config.lease_ttl.as_millis() as u64
    }

    /// The address handed to the auth script: the peer, or the last
    /// X-Forwarded-For entry when the peer is a trusted proxy (the entry that
    /// proxy appended; earlier ones are whatever the client claimed).
    pub fn client_addr(&self, peer: SocketAddr, forwarded_for: Option<&str>) -> String {
        client_addr(&self.config.trusted_proxies, peer, forwarded_for)
    }

    /// Decides what a request on `session_id` may do once its envelope
    /// opened: a refused identity ends the session; a pending session
    /// becomes live and earns its resumption ticket.
    pub fn admit_request(&self, session_id: &str, found: &Found) -> RequestAdmission {
        let session = found.session();
        let why = match found {
            Found::Ended(_, why) => Some(why.clone()),
            _ => self
                .access
                .identity_refusal(session)
                .inspect(|_| self.sessions.count_refused()),
        };
        if let Some(why) = why {
            self.sessions.end(session_id);
            return RequestAdmission::Refuse(why);
        }
        let Found::Pending(_) = found else {
            return RequestAdmission::Serve { ticket: None };
        };
        match self.sessions.promote(session_id, session) {
            Promotion::Promoted => {
                let ticket = self
                    .tickets
                    .issue_ticket(&session.identity_id, session.identity_expires);
                if ticket.is_some() {
                    self.sessions.count_ticket();
                }
                RequestAdmission::Serve { ticket }
            }
            Promotion::AlreadyLive => RequestAdmission::Serve { ticket: None },
            Promotion::Ended(why) => {
                self.sessions.end(session_id);
                RequestAdmission::Refuse(why)
            }
            Promotion::Full => RequestAdmission::Full {
                max_sessions: self.config.max_sessions,
            },
        }
    }

    /// The ticket a resumption presents, checked ([`Tickets::check_ticket`]);
    /// None when it is refused (the reason is logged and counted, the
    /// client only learns "refused"). An error only when the database could
    /// not be asked: nothing was refused.
    pub async fn resume_ticket(
        &self,
        ticket: &[u8],
    ) -> Result<Option<(IdentityInfo, OpenedTicket)>, AppError> {
        match self.tickets.check_ticket(ticket).await {
            Ok(t) => Ok(Some(t)),
            Err(AppError::Unauthorized(why)) => {
                tracing::info!(reason = %why, "resumption ticket refused");
                self.sessions.count_resume_refused();
                Ok(None)
            }
            Err(other) => Err(other),
        }
    }

    /// Forgets the sessions idle past `session_idle` (maintenance).
    pub(super) fn sweep_idle(&self) {
        let swept = self.sessions.sweep(self.clock.db_now());
        if swept > 0 {
            tracing::debug!(swept, "forgot idle protocol sessions");
        }
    }
}

/// [`Admission::client_addr`] with the trusted proxies given.
fn client_addr(trusted: &[IpAddr], peer: SocketAddr, forwarded_for: Option<&str>) -> String {
    if trusted.contains(&peer.ip()) {
        if let Some(ip) = forwarded_for
            .and_then(|v| v.rsplit(',').next())
            .and_then(|v| v.trim().parse::<IpAddr>().ok())
        {
            return ip.to_string();
        }
    }
    peer.ip().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forwarded_for_is_believed_only_from_trusted_proxies() {
        let h = Some("6.6.6.6, 10.1.2.3");
        let proxy: SocketAddr = "127.0.0.1:5000".parse().unwrap();
        let other: SocketAddr = "192.0.2.7:5000".parse().unwrap();
        let trusted = ["127.0.0.1".parse().unwrap()];
        assert_eq!(client_addr(&trusted, proxy, h), "10.1.2.3");
        assert_eq!(client_addr(&trusted, other, h), "192.0.2.7");
        assert_eq!(client_addr(&[], proxy, h), "127.0.0.1");
        let h = Some("garbage");
        assert_eq!(client_addr(&trusted, proxy, h), "127.0.0.1");
    }
}
