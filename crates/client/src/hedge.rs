//! Hedged requests: one round of a call asks the current server, and the
//! next ones (group first) when it is slow or fails; the first answer counts.
//! [`Timing`]: how long a round waits for one answer and between hedges.

use floatlm_protocol::messages::{Request, Response};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::client::{Attempt, Channel, Client, Options};
use crate::ClientError;

/// The shortest wait for one answer, however close a deadline: a proxy in
/// front must get to give up on a hung instance and retry the request on
/// the next one (the shipped NGINX configs: `proxy_read_timeout 1s`) before
/// the client gives up on the proxy, which the proxy would log as a client
/// abort (499) without counting the instance as failed.
pub(crate) const MIN_ATTEMPT: Duration = Duration::from_millis(1500);
/// Hedges never start closer together than this.
const MIN_HEDGE: Duration = Duration::from_millis(50);

/// How one round of a call spends its time, derived from how much it has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Timing {
    /// The longest wait for one server's answer (each HTTP exchange).
    pub attempt: Duration,
    /// Ask the next server too when none answered this long.
    pub hedge: Duration,
}

impl Timing {
    /// `left`: the time until the call's deadline (a heartbeat: until its
    /// promise ends), None without one; `servers`: how many there are.
    pub(crate) fn new(left: Option<Duration>, servers: usize, o: &Options) -> Timing {
        let attempt = match left {
            None => o.request_timeout,
            Some(left) => (left / 2).max(MIN_ATTEMPT).min(o.request_timeout).min(left),
        };
        let hedge = o
            .hedge_delay
            .min(attempt / servers.max(1) as u32)
            .max(MIN_HEDGE);
        Timing { attempt, hedge }
    }
}

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

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn without_a_deadline_an_attempt_waits_the_request_timeout() {
        let t = Timing::new(None, 2, &Options::default());
        assert_eq!(
            t,
            Timing {
                attempt: ms(5000),
                hedge: ms(500)
            }
        );
    }

    #[test]
    fn a_heartbeat_waits_half_its_time_left_at_least_1500_ms_never_past_its_deadline() {
        let o = Options::default();
        // lease_ttl 10 s answered in full: 5.67 s left at the heartbeat.
        assert_eq!(Timing::new(Some(ms(5666)), 2, &o).attempt, ms(2833));
        // Half a TTL answered (5 s): 2.83 s left.
        assert_eq!(Timing::new(Some(ms(2833)), 2, &o).attempt, ms(1500));
        // lease_ttl 60 s: capped by request_timeout.
        assert_eq!(Timing::new(Some(ms(38000)), 2, &o).attempt, ms(5000));
        // Nearly out of time: what is left.
        assert_eq!(Timing::new(Some(ms(900)), 2, &o).attempt, ms(900));
    }

    #[test]
    fn every_server_is_asked_within_one_attempt_timeout() {
        let o = Options::default();
        for servers in 1..=8 {
            for left in [ms(300), ms(1400), ms(2833), ms(40_000)] {
                let t = Timing::new(Some(left), servers, &o);
                assert!(t.hedge <= o.hedge_delay);
                assert!(
                    t.hedge * (servers as u32 - 1) <= t.attempt.max(MIN_HEDGE * 8),
                    "{servers} servers, {left:?} left: {t:?}"
                );
            }
        }
        assert_eq!(Timing::new(Some(ms(1400)), 4, &o).hedge, ms(350));
    }
}
