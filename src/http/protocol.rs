//! The licensing protocol over HTTP: ping, handshake, resume, sealed requests.
//!
//! docs/protocol.md is the contract. Envelope-level failures (unknown
//! session, replay, a byte changed) answer with plain JSON errors, because
//! nothing sealed can be trusted; operation results travel sealed.

use axum::body::Bytes;
use axum::extract::{ConnectInfo, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use floatlm_protocol::envelope::{self, Binding, Direction};
use floatlm_protocol::handshake::{self, ServerHelloPayload};
use floatlm_protocol::messages::{
    limits, reason, ErrorCode, FeatureInfo, HeldSeat, LeaseStatus, Request, Response as Reply,
    SealedResponse, MINE_BUDGET,
};
use floatlm_protocol::{ProtocolError, HEADER_INSTANCE, HEADER_SESSION, PATH_REQUEST};
use serde_json::json;
use std::net::SocketAddr;
use std::sync::Arc;

use super::ApiError;
use crate::app::{
    Admission, AppError, Assignments, Cluster, Login, Refused, RequestAdmission, SeatFailure,
    Seats, SessionRefusal,
};
use crate::domain::seats::{LeaseRef, RequestId, SeatError};
use crate::identities::IdentityRefusal;
use crate::incident::Incident;
use crate::metrics::Operation;
use crate::sessions::{refusal_code, Found, Opened, Session};

fn octets(body: Vec<u8>) -> Response {
    ([(header::CONTENT_TYPE, "application/octet-stream")], body).into_response()
}

fn protocol_error(e: ProtocolError) -> ApiError {
    let msg = e.to_string();
    match e {
        ProtocolError::AuthFailed => ApiError::new(StatusCode::UNAUTHORIZED, "auth_failed", msg),
        ProtocolError::UnsupportedVersion(_) => {
            ApiError::new(StatusCode::BAD_REQUEST, "unsupported_version", msg)
        }
        ProtocolError::Replay(_) => ApiError::new(StatusCode::CONFLICT, "replay", msg),
        ProtocolError::BadEnvelope => ApiError::new(StatusCode::BAD_REQUEST, "bad_envelope", msg),
        ProtocolError::TooLarge => {
            ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large", msg)
        }
        ProtocolError::Malformed(_) => ApiError::new(StatusCode::BAD_REQUEST, "malformed", msg),
    }
}

/// `GET /sentinel/ldk/v1/ping`: no session needed.
pub async fn ping(State(cluster): State<Arc<Cluster>>) -> Response {
    Json(json!({
        "instance": cluster.instance_id(),
        "version": env!("CARGO_PKG_VERSION"),
        "protocol": floatlm_protocol::VERSION,
    }))
    .into_response()
}

/// Refuses new sessions while draining or full (before any key work).
fn admit(admission: &Admission) -> Result<(), ApiError> {
    admission.admit_session().map_err(|why| match why {
        // Draining: new sessions go elsewhere (proxies retry a 503 on the next
        // instance and count it against the instance, which is leaving; the
        // client library fails over); existing sessions are still served.
        SessionRefusal::Draining => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "draining",
            "this instance is draining; use another instance",
        ),
        SessionRefusal::Full { max_sessions } => too_many_sessions(max_sessions),
    })
}

/// A full session table is a healthy instance at capacity, not a failed
/// one: 429, which the shipped proxy configurations pass to the client
/// without counting it against the instance. A 503 here made NGINX
/// (`max_fails=1`) take the instance out for `fail_timeout`, moving every
/// client it served to other instances (`session_unknown`, resumptions
/// there) because of one client too many.
fn too_many_sessions(max_sessions: usize) -> ApiError {
    ApiError::new(
        StatusCode::TOO_MANY_REQUESTS,
        "too_many_sessions",
        format!(
            "this instance holds its maximum of {max_sessions} sessions; try another instance or later"
        ),
    )
}

/// A ServerHello's payload. It carries no resumption ticket: the session
/// earns one with its first valid request (a replayed hello never does).
fn hello_payload(
    admission: &Admission,
    session: &str,
    refused: Option<String>,
) -> ServerHelloPayload {
    ServerHelloPayload {
        session: session.to_string(),
        instance: admission.instance_id().to_string(),
        lease_ttl_ms: admission.announced_lease_ttl_ms(),
        refused,
        resume: None,
    }
}

/// `POST /sentinel/ldk/v1/handshake`: ClientHello in, ServerHello out. The
/// session stays pending (not counted, no ticket) until its first request.
pub async fn handshake(
    State(admission): State<Arc<Admission>>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let hello = handshake::parse_client_hello(&body).map_err(protocol_error)?;
    admit(&admission)?;
    // Unknown ids take the same path with a stand-in secret: same work, same
    // error. Both come from the identity cache (a database read on a miss),
    // and expiry is judged by the database clock estimate, without a round
    // trip, whether the identity has an expiry or not.
    let (lookup, refused) = admission.handshake_identity(hello.identity_id).await?;
    let session_id = crate::crypto::random_hex(16);
    let payload = hello_payload(
        &admission,
        &session_id,
        refused.as_ref().map(|r| r.message.clone()),
    );
    let (keys, reply) =
        handshake::respond(&hello, lookup.secret.expose().as_bytes(), &payload, None)
            .map_err(protocol_error)?;
    let Some(identity) = &lookup.identity else {
        // Unreachable in practice: a stand-in secret never matches a client's.
        return Err(protocol_error(ProtocolError::AuthFailed));
    };
    if refused.is_none() {
        admission.insert_pending_session(
            session_id,
            Session::new(
                identity.id.clone(),
                identity.expires_at,
                Opened::Handshake,
                keys,
            ),
        );
    }
    Ok(octets(reply))
}

/// `POST /sentinel/ldk/v1/resume`: ResumeHello in, ServerHello out. Any
/// instance continues a session from the ticket another one issued; the new
/// session is pending until its first request, like a handshake's.
pub async fn resume(
    State(admission): State<Arc<Admission>>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let hello = handshake::parse_resume_hello(&body).map_err(protocol_error)?;
    admit(&admission)?;
    // An error: the database could not be asked, nothing was refused.
    let Some((identity, ticket)) = admission.resume_ticket(hello.ticket).await? else {
        return Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "ticket_refused",
            "resumption ticket refused (expired, revoked or unknown): handshake with the identity secret",
        ));
    };
    let session_id = crate::crypto::random_hex(16);
    let payload = hello_payload(&admission, &session_id, None);
    let (keys, reply) = handshake::respond_resume(&hello, ticket.secret.as_ref(), &payload, None)
        .map_err(protocol_error)?;
    admission.insert_pending_session(
        session_id,
        Session::new(identity.id, identity.expires_at, Opened::Resume, keys),
    );
    Ok(octets(reply))
}

/// One request as the server reads it off the wire, before any operation:
/// headers read, session found, envelope opened under the replay window.
pub struct Incoming {
    pub session_id: String,
    /// The X-LDK-Instance header ("" when absent).
    pub instance: String,
    found: Found,
    session: Arc<Session>,
    seq: u64,
    /// The opened request: JSON, not yet decoded ([`decode`]).
    pub plaintext: Vec<u8>,
    s2c: [u8; 32],
}

impl Incoming {
    /// The binding the response is sealed under (the request's).
    fn binding(&self) -> Binding<'_> {
        Binding {
            method: "POST",
            path: PATH_REQUEST,
            instance: &self.instance,
            session: &self.session_id,
        }
    }
}

/// Reads a request's headers, finds its session and opens its envelope
/// (the replay window moves only for one that opens). No network and no
/// database: the fuzz target `request` drives it. An error is the plain
/// JSON answer, because nothing sealed can be trusted yet.
pub fn open_request(
    admission: &Admission,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<Incoming, ApiError> {
    let session_id = headers
        .get(HEADER_SESSION)
        .and_then(|v| v.to_str().ok())
        .ok_or_else(|| ApiError::bad_request("missing X-LDK-Session header: handshake first"))?
        .to_string();
    let instance = match headers.get(HEADER_INSTANCE) {
        None => String::new(),
        Some(v) => match v.to_str() {
            Ok(v) if limits::valid_instance(v) => v.to_string(),
            _ => {
                return Err(ApiError::bad_request(format!(
                    "X-LDK-Instance must be at most {} visible ASCII characters without spaces",
                    limits::INSTANCE_CHARS
                )))
            }
        },
    };
    let found = admission.find_session(&session_id).ok_or_else(|| {
        ApiError::new(
            StatusCode::UNAUTHORIZED,
            "session_unknown",
            "session unknown or expired on this instance: resume with your ticket if you hold one, otherwise handshake again",
        )
    })?;
    let session = found.session().clone();
    let binding = Binding {
        method: "POST",
        path: PATH_REQUEST,
        instance: &instance,
        session: &session_id,
    };
    let (seq, plaintext, s2c) = {
        let mut ch = session.channel.lock().expect("lock");
        let seq = envelope::peek_seq(body).map_err(protocol_error)?;
        ch.window.check(seq).map_err(protocol_error)?;
        let (seq, pt) = envelope::open(&ch.keys.c2s, Direction::ClientToServer, &binding, body)
            .map_err(protocol_error)?;
        ch.window.accept(seq).map_err(protocol_error)?;
        (seq, pt, ch.keys.s2c)
    };
    session.touch();
    Ok(Incoming {
        session_id,
        instance,
        found,
        session,
        seq,
        plaintext,
        s2c,
    })
}

/// The operation an opened request names, or the sealed answer to one
/// that names none.
pub fn decode(plaintext: &[u8]) -> Result<Request, Reply> {
    serde_json::from_slice::<Request>(plaintext).map_err(|e| Reply::Error {
        code: ErrorCode::BadRequest,
        reason: None,
        message: format!("request is not a valid operation: {e}"),
    })
}

/// `POST /sentinel/ldk/v1/request`: one sealed request, one sealed response.
pub async fn request(
    State(admission): State<Arc<Admission>>,
    State(seats): State<Arc<Seats>>,
    State(assignments): State<Arc<Assignments>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let incoming = open_request(&admission, &headers, &body)?;
    let (session_id, session) = (&incoming.session_id, &incoming.session);
    let mut operation = Operation::Request;
    // The envelope opened: from here on every answer is sealed.
    let sealed = match admission.admit_request(session_id, &incoming.found) {
        RequestAdmission::Full { max_sessions } => return Err(too_many_sessions(max_sessions)),
        RequestAdmission::Refuse(why) => SealedResponse::from(refusal(&why)),
        RequestAdmission::Serve { ticket } => {
            let reply = match decode(&incoming.plaintext) {
                Ok(req) => {
                    operation = Operation::of(&req);
                    handle(
                        &seats,
                        &assignments,
                        session,
                        admission.client_addr(
                            peer,
                            headers.get("x-forwarded-for").and_then(|v| v.to_str().ok()),
                        ),
                        &incoming.instance,
                        req,
                    )
                    .await
                }
                Err(reply) => reply,
            };
            if matches!(&reply, Reply::Error { code, .. } if code.is_identity_refusal()) {
                // Refused while the operation ran: the session ends too.
                admission.end_session(session_id);
            }
            SealedResponse {
                response: reply,
                resume: ticket,
            }
        }
    };
    let json = serde_json::to_vec(&sealed).expect("reply serialises");
    let mut resp = octets(envelope::seal(
        &incoming.s2c,
        Direction::ServerToClient,
        incoming.seq,
        &incoming.binding(),
        &json,
    ));
    resp.extensions_mut().insert(operation);
    Ok(resp)
}

/// The sealed answer to a request of a refused identity.
fn refusal(why: &IdentityRefusal) -> Reply {
    Reply::Error {
        code: refusal_code(why.kind),
        reason: None,
        message: format!(
            "{}: this identity may not be used any more; its sessions and leases are ended",
            why.message
        ),
    }
}

fn no_license(reason: &str, message: String) -> Reply {
    Reply::Error {
        code: ErrorCode::NoLicense,
        reason: Some(reason.to_string()),
        message,
    }
}

fn seat_error(e: SeatFailure) -> Reply {
    let e = match e {
        SeatFailure::Refused(e) => e,
        SeatFailure::Storage(e) => {
            return unavailable(AppError::Incident(Incident::of_storage(
                "the database failed a login",
                &e,
            )))
        }
    };
    let message = e.to_string();
    match e {
        SeatError::NoSeat { .. } => no_license(reason::ALL_SEATS_TAKEN, message),
        SeatError::UnknownFeature(_) => no_license(reason::UNKNOWN_FEATURE, message),
        SeatError::Expired(_) => no_license(reason::LICENSE_EXPIRED, message),
        SeatError::Refused(..) => no_license(reason::LICENSE_REFUSED, message),
        SeatError::NotAssigned(_) => no_license(reason::NOT_ASSIGNED, message),
        SeatError::RequestIdReused(_) => Reply::Error {
            code: ErrorCode::BadRequest,
            reason: None,
            message,
        },
        SeatError::LeaseEnded(_) => Reply::Error {
            code: ErrorCode::LeaseEnded,
            reason: None,
            message,
        },
    }
}

/// `unavailable`, with the incident id when the cause is in the log; any
/// other error's text is logged as an incident too, never sent.
fn unavailable(e: AppError) -> Reply {
    let incident = match e {
        AppError::Incident(i) => i,
        other => Incident::record("a request failed", &other),
    };
    Reply::Error {
        code: ErrorCode::Unavailable,
        reason: None,
        message: incident.to_string(),
    }
}

/// The answer to an operation the App did not carry out as asked.
fn refused(r: Refused) -> Reply {
    match r {
        Refused::Identity(why) => refusal(&why),
        Refused::AuthDenied(why) => no_license(reason::AUTH_DENIED, format!("No license: {why}")),
        Refused::Seat(e) => seat_error(e),
        Refused::Failed(e) => unavailable(e),
    }
}

async fn handle(
    seats: &Seats,
    assignments: &Assignments,
    session: &Session,
    addr: String,
    instance: &str,
    req: Request,
) -> Reply {
    let identity = session.identity_id.as_str();
    match req {
        Request::Info { features } => match assignments.features_for(identity).await {
            Ok(all) => Reply::Info {
                features: all
                    .iter()
                    .filter(|f| features.is_empty() || features.contains(&f.usage.name))
                    .map(|f| FeatureInfo {
                        name: f.usage.name.clone(),
                        total: f.usage.total,
                        used: f.usage.used,
                        free: f.free_for_clients(),
                    })
                    .collect(),
            },
            Err(e) => unavailable(e),
        },
        Request::Login {
            feature,
            request_id,
            auth,
        } => {
            let Ok(request_id) = RequestId::new(request_id) else {
                return Reply::Error {
                    code: ErrorCode::BadRequest,
                    reason: None,
                    message: "request id must be 1-96 characters of A-Z a-z 0-9 : . _ -".into(),
                };
            };
            // What the client reports about itself goes to the auth script,
            // the lease list and the log: within limits, or not at all.
            let auth = match auth.checked() {
                Ok(auth) => auth,
                Err(why) => {
                    return Reply::Error {
                        code: ErrorCode::BadRequest,
                        reason: None,
                        message: format!(
                            "login refused: {why} (docs/protocol.md, \"Client-reported strings\")"
                        ),
                    }
                }
            };
            let login = Login {
                feature,
                request_id,
                auth,
                addr,
                instance: instance.to_string(),
            };
            match seats.login(session, login).await {
                Ok(g) => Reply::Granted {
                    lease: g.grant.lease.to_string(),
                    feature: g.grant.feature,
                    ttl_ms: g.ttl_ms,
                    lease_gen: g.grant.lease.lease_gen,
                    replayed: g.grant.replayed,
                },
                Err(r) => refused(r),
            }
        }
        Request::Heartbeat { leases } => {
            if leases.len() > 1000 {
                return Reply::Error {
                    code: ErrorCode::BadRequest,
                    reason: None,
                    message: "at most 1000 leases per heartbeat".into(),
                };
            }
            let parsed: Vec<Option<LeaseRef>> = leases.iter().map(|l| l.parse().ok()).collect();
            let promises = match seats.heartbeat(session, &parsed).await {
                Ok(p) => p,
                Err(r) => return refused(r),
            };
            Reply::Heartbeat {
                leases: leases
                    .into_iter()
                    .zip(promises)
                    .map(|(lease, promise)| LeaseStatus {
                        lease,
                        alive: promise.is_some(),
                        ttl_ms: promise.unwrap_or(0),
                    })
                    .collect(),
            }
        }
        Request::Mine {} => match seats.mine(identity).await {
            Ok(leases) => {
                // As many as fit one envelope; the count of the rest.
                let (mut shown, mut used) = (Vec::new(), 0);
                for seat in leases.iter().map(held_seat) {
                    used += serde_json::to_vec(&seat).map_or(usize::MAX, |j| j.len() + 1);
                    if used > MINE_BUDGET {
                        break;
                    }
                    shown.push(seat);
                }
                Reply::Mine {
                    more: (leases.len() - shown.len()) as u64,
                    leases: shown,
                }
            }
            Err(e) => unavailable(e),
        },
        Request::Release { lease } => match lease.parse::<LeaseRef>() {
            Ok(l) => match seats.release_mine(identity, l).await {
                Ok(free_at) => Reply::SeatReleased {
                    lease,
                    released: free_at.is_some(),
                    free_at_ms: free_at.map(|t| t.timestamp_millis()),
                },
                Err(e) => unavailable(e),
            },
            Err(e) => Reply::Error {
                code: ErrorCode::BadRequest,
                reason: None,
                message: e,
            },
        },
        Request::Logout { lease } => match lease.parse::<LeaseRef>() {
            Ok(l) => match seats.release(identity, l).await {
                Ok(released) => Reply::Released { lease, released },
                Err(e) => unavailable(e),
            },
            Err(e) => Reply::Error {
                code: ErrorCode::BadRequest,
                reason: None,
                message: e,
            },
        },
    }
}

/// A lease as `mine` shows it to a session of its identity: by its seat
/// reference, never its lease id (see [`LeaseRef::seat_ref`]).
fn held_seat(l: &crate::domain::seats::LeaseInfo) -> HeldSeat {
    let (user, host) = reported_user_host(&l.client_info);
    HeldSeat {
        lease: l.lease.seat_ref().to_string(),
        feature: l.feature.clone(),
        user,
        host,
        since_ms: l.granted_at.map_or(0, |t| t.timestamp_millis()),
        promise_end_ms: l.expires_at.timestamp_millis(),
    }
}

/// The user and host of a lease's client info, which a login records as
/// `USER@HOST (INSTANCE)` (the instance has no spaces; the user may hold
/// an `@`, so the host is after the last one).
fn reported_user_host(client_info: &str) -> (String, String) {
    let who = client_info
        .rsplit_once(" (")
        .map_or(client_info, |(who, _)| who);
    match who.rsplit_once('@') {
        Some((user, host)) => (user.to_string(), host.to_string()),
        None => (who.to_string(), String::new()),
    }
}
