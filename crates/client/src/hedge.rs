//! Hedged requests: one round of a call asks the current server, and the
//! next ones (group first) when it is slow or fails; the first answer counts.

use floatlm_protocol::messages::{Request, Response};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::client::{Attempt, Channel, Client, Timing};
use crate::ClientError;

/// How a round of a call ended without an answer.
pub(crate) struct RoundFailure {
    /// What happened on the current server (the caller acts on it), or a
    /// final answer from any.
    pub(crate) primary: Attempt,
    /// `ADDRESS: message` of a hedged server whose database is unavailable.
    pub(crate) unavailable: Option<String>,
}

impl Client {
    /// One round of [`Client::call_until`]: `req` on `primary`, hedged on
    /// the other servers. Ok with the first answer (a hedge's channel
    /// becomes the current one, and the primary's server is marked
    /// failing); Err when every copy failed or a final answer came.
    pub(crate) async fn round(
        &self,
        primary: &Arc<Channel>,
        req: &Request,
        t: Timing,
        sends: &mut u32,
    ) -> Result<(Response, Instant), RoundFailure> {
        type Outcome = Result<(Response, Instant, Arc<Channel>), Attempt>;
        let mut set: tokio::task::JoinSet<(usize, bool, Outcome)> = tokio::task::JoinSet::new();
        {
            let (this, ch, req) = (self.clone(), primary.clone(), req.clone());
            set.spawn(async move {
                let r = this.send(&ch, &req, t.attempt).await;
                (ch.server, false, r.map(|(resp, sent)| (resp, sent, ch)))
            });
        }
        *sends += 1;
        let began = Instant::now();
        let mut candidates =
            std::collections::VecDeque::from(self.hedge_candidates(primary.server));
        let mut hedged = false;
        let mut next_hedge = began + t.hedge;
        let mut primary_err: Option<Attempt> = None;
        let mut unavailable = None;
        loop {
            let start_next = tokio::select! {
                joined = set.join_next() => {
                    let Some(joined) = joined else { break };
                    let Ok((i, hedge, outcome)) = joined else { continue };
                    match outcome {
                        Ok((resp, sent, ch)) => {
                            if hedge {
                                self.adopt(primary, ch, primary_err.take(), began.elapsed()).await;
                            }
                            self.mark_ok(i, None);
                            return Ok((resp, sent));
                        }
                        // A final answer (no license, lease ended, identity
                        // refused): every server would say the same.
                        Err(Attempt::Fatal(e)) => {
                            return Err(RoundFailure { primary: Attempt::Fatal(e), unavailable });
                        }
                        Err(a) if !hedge => {
                            if !hedged {
                                // Failed before any hedge: the caller knows
                                // what to do about this server.
                                return Err(RoundFailure { primary: a, unavailable });
                            }
                            primary_err = Some(a);
                        }
                        Err(a) => self.hedge_failed(i, a, &mut unavailable),
                    }
                    // A copy failed: the next server at once, not after
                    // the hedge delay.
                    true
                }
                _ = tokio::time::sleep_until(next_hedge.into()), if !candidates.is_empty() => true,
            };
            if start_next {
                let Some(j) = candidates.pop_front() else {
                    if set.is_empty() {
                        break;
                    }
                    continue;
                };
                let (this, req) = (self.clone(), req.clone());
                set.spawn(async move { (j, true, this.hedge(j, &req, t).await) });
                *sends += 1;
                hedged = true;
                next_hedge = Instant::now() + t.hedge;
            }
        }
        Err(RoundFailure {
            primary: primary_err.unwrap_or_else(|| Attempt::Failover("no answer".into())),
            unavailable,
        })
    }

    /// A hedged copy of `req` on server `j`: on the current channel when
    /// it is there, else on a session resumed from the ticket (or a
    /// handshake).
    async fn hedge(
        &self,
        j: usize,
        req: &Request,
        t: Timing,
    ) -> Result<(Response, Instant, Arc<Channel>), Attempt> {
        let current = self
            .inner
            .active
            .try_lock()
            .ok()
            .and_then(|a| a.as_ref().filter(|c| c.server == j).cloned());
        let reused = current.is_some();
        let ch = match current {
            Some(ch) => ch,
            None => match self.open_channel(j, t.attempt).await {
                Ok(ch) => Arc::new(ch),
                // The identity itself is refused: final everywhere.
                Err(Attempt::Fatal(e @ ClientError::IdentityRefused { .. })) => {
                    return Err(Attempt::Fatal(e))
                }
                // Another server's login failing (a wrong secret for that
                // address) is that server's failure, not the answer.
                Err(Attempt::Fatal(e)) => return Err(Attempt::Failover(e.to_string())),
                Err(a) => return Err(a),
            },
        };
        match self.send(&ch, req, t.attempt).await {
            Ok((resp, sent)) => Ok((resp, sent, ch)),
            Err(Attempt::Rehandshake) if reused => {
                self.drop_channel(&ch).await;
                Err(Attempt::Rehandshake)
            }
            Err(a) => Err(a),
        }
    }

    /// Records how a hedge on server `j` failed.
    fn hedge_failed(&self, j: usize, a: Attempt, unavailable: &mut Option<String>) {
        match a {
            Attempt::Unavailable(msg) => {
                self.mark_failed(j, &msg);
                *unavailable = Some(format!("{}: {msg}", self.inner.servers[j].spec.address));
            }
            Attempt::Failover(msg) | Attempt::Gateway(msg) => self.mark_failed(j, &msg),
            // A session refused right after it was opened (a proxy at that
            // address moved it): says nothing about the server.
            Attempt::Rehandshake | Attempt::Fatal(_) => {}
        }
    }

    /// A hedge on `new`'s server answered while `old` had not (or had
    /// failed with `old_err`): `new` becomes the current channel, and
    /// `old`'s server is marked failing, so that the status shows it and
    /// later requests do not wait for it again.
    async fn adopt(
        &self,
        old: &Arc<Channel>,
        new: Arc<Channel>,
        old_err: Option<Attempt>,
        waited: Duration,
    ) {
        let why = match old_err {
            None => Some(format!(
                "no answer within {} ms (hung or overloaded); {} answered instead",
                waited.as_millis(),
                self.inner.servers[new.server].spec.address
            )),
            Some(Attempt::Rehandshake) => None,
            Some(Attempt::Failover(m) | Attempt::Gateway(m) | Attempt::Unavailable(m)) => Some(m),
            Some(Attempt::Fatal(e)) => Some(e.to_string()),
        };
        if let Some(why) = why {
            self.mark_failed(old.server, &why);
        }
        let mut active = self.inner.active.lock().await;
        if active.as_ref().is_none_or(|a| Arc::ptr_eq(a, old)) {
            *active = Some(new);
        }
    }
}
