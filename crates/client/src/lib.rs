//! The floatlm Licensing API for applications.
//!
//! ```no_run
//! # async fn demo() -> Result<(), floatlm_client::ClientError> {
//! let client = floatlm_client::Client::connect(
//!     &["00112233aabbccdd:SECRET@lic1.example.com:8990", "00112233aabbccdd:SECRET@lic2.example.com:8990"],
//!     floatlm_client::Options::from_env(),
//! ).await?;
//! let seat = client.checkout("cad").await?;   // heartbeats on its own, survives server failures
//! // ... work ...
//! seat.release().await;
//! # Ok(()) }
//! ```
//!
//! * The client contacts every server in parallel and uses the first that
//!   completes a handshake.
//! * A [`SeatHandle`] is virtual: a background task renews the lease at a
//!   fraction of its TTL; when its server fails, the same lease is renewed
//!   through another server, with no second login. The application asks the
//!   handle for its state and the client for each server's status.
//! * A handle promises the seat until [`SeatHandle::valid_until`]; when the
//!   promise breaks (an operator released the lease, or no server answered
//!   in time) [`SeatHandle::lost`] resolves and [`SeatHandle::on_loss`]
//!   callbacks run at that moment, so the application stops using the
//!   feature before the seat can be granted to someone else.
//! * Each server hands out a resumption ticket with every session. When a
//!   session is lost (an instance died behind a proxy, 401 session_unknown,
//!   502/503/504), the client resumes it with the ticket on whichever
//!   instance answers: no login, same leases, same request ids.
//! * A server that does not answer (hung, overloaded) costs one hedge
//!   delay, not a timeout: a request with no answer after
//!   [`Options::hedge_delay`] (500 ms) also goes to the next server, and the
//!   first answer counts. A heartbeat goes out at a third of the promise it
//!   renews and waits for one server at most half of what is left (at
//!   least 1.5 s), so every server is asked before the promise ends. The
//!   schedule, with numbers: crates/client/README.md.
//! * A failed server is retried every [`Options::retry_interval`] (default
//!   60 s), up to [`Options::max_retries`] times (default: unlimited); when
//!   every server is failing, all are tried rather than waiting.
//! * Servers can be reached over HTTPS (`https://HOST[:PORT]`, or port 443;
//!   [`Options::ca_file`] for a private CA) and tagged with an affinity
//!   group (`eu:HOST:PORT`, [`Options::group`]): the client stays in its
//!   group while a member answers and comes back to it after a failover.
//! * [`ClientConfig`] reads the client file (the same one the CLI reads)
//!   and FLOATLM_* variables; [`Client::from_env`] connects as it says.
//!   docs/client.md has every key.

mod client;
mod config;
mod error;
mod handle;
mod hedge;
mod identity;
mod servers;
mod transport;

pub use client::{Client, MySeats, Options, PingInfo, SeatRelease, SessionStats};
pub use config::{
    client_config_keys, client_config_search_path, ClientConfig, Source, CONFIG_ENV, SYSTEM_FILE,
};
pub use error::{ClientError, NoLicenseReason};
pub use floatlm_protocol::messages::{AuthInfo, FeatureInfo, HeldSeat};
pub use handle::{HandleState, LossReason, Released, SeatHandle};
pub use identity::{ServerAddress, ServerSpec};
pub use servers::{ServerState, ServerStatus};
pub use transport::INSECURE_WARNING;
