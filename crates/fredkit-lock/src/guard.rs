//! [`LockGuard`], [`LostSignal`] and the watchdog.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use fred::bytes_utils::Str;
use fred::types::Key;
use fredkit_core::traits::LockLease;
use fredkit_core::Result;
use tokio::sync::watch;
use tokio::task::AbortHandle;
use tokio::time::Instant;
use tracing::Instrument;

use crate::grant::{self, check_ttl, spawn_release, Shared};
use crate::metrics::Counters;
use crate::options::{millis, LockOptions};

/// What the holder knows about its lease.
#[derive(Clone, Copy, Debug)]
struct LeaseState {
    /// Renewal or `extend` found the lock gone, or the watchdog could not
    /// renew it for a whole TTL.
    lost: bool,
    /// The lease surely ends no earlier than this on the server (it was
    /// measured from *before* the request that granted or renewed it).
    valid_until: Instant,
}

/// A watch on whether a lock (or permit) is still held: clone it into the
/// protected work and check [`is_lost`](Self::is_lost) or await
/// [`lost`](Self::lost) to stop in time.
///
/// "Lost" means any of: the watchdog's renewal found the lock gone or could
/// not reach Redis for a whole TTL; an [`extend`](LockGuard::extend)
/// returned `false`; or, without a watchdog, the TTL measured from before
/// the grant (or the last extend) has run out. The guard being released or
/// dropped also ends the watch.
#[derive(Clone)]
pub struct LostSignal {
    rx: watch::Receiver<LeaseState>,
}

impl fmt::Debug for LostSignal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LostSignal")
            .field("lost", &self.is_lost())
            .finish()
    }
}

impl LostSignal {
    fn new(rx: watch::Receiver<LeaseState>) -> Self {
        LostSignal { rx }
    }

    /// True once the lease is lost or has run out (see the type docs). Never
    /// goes back to false.
    pub fn is_lost(&self) -> bool {
        let st = *self.rx.borrow();
        st.lost || Instant::now() >= st.valid_until || self.rx.has_changed().is_err()
    }

    /// How long the lease surely lasts, as far as this process knows (zero
    /// when lost).
    pub fn remaining(&self) -> Duration {
        let st = *self.rx.borrow();
        if st.lost {
            return Duration::ZERO;
        }
        st.valid_until.saturating_duration_since(Instant::now())
    }

    /// Completes when the lease is lost or runs out, or the guard is
    /// released or dropped. Cancel-safe: dropping the future changes nothing.
    pub async fn lost(&self) {
        let mut rx = self.rx.clone();
        loop {
            let st = *rx.borrow_and_update();
            if st.lost || Instant::now() >= st.valid_until {
                return;
            }
            tokio::select! {
                changed = rx.changed() => {
                    if changed.is_err() {
                        return;
                    }
                }
                _ = tokio::time::sleep_until(st.valid_until) => {}
            }
        }
    }
}

/// Marks the lease lost (once) and counts it.
fn mark_lost(state: &watch::Sender<LeaseState>, counters: &Counters) {
    let mut first = false;
    state.send_if_modified(|s| {
        if s.lost {
            false
        } else {
            s.lost = true;
            first = true;
            true
        }
    });
    if first {
        Counters::add(&counters.lost);
    }
}

/// Renews a lock every `ttl / 3` until aborted or the lock is lost.
async fn watchdog(
    shared: Arc<Shared>,
    key: Key,
    token: Str,
    ttl: Duration,
    state: Arc<watch::Sender<LeaseState>>,
) {
    let period = ttl / 3;
    let retry = (period / 4).max(Duration::from_millis(5));
    let ttl_ms = millis(ttl).max(1);
    let mut next = Instant::now() + period;
    loop {
        tokio::time::sleep_until(next).await;
        let st = *state.borrow();
        if st.lost {
            return;
        }
        let started = Instant::now();
        let budget = st.valid_until.saturating_duration_since(started);
        if budget.is_zero() {
            tracing::warn!(
                "fredkit.lock: watchdog could not renew the lock within its TTL; marking it lost"
            );
            mark_lost(&state, &shared.counters);
            return;
        }
        let renew = grant::extend(&shared, &key, &token, ttl_ms);
        match tokio::time::timeout(budget, renew).await {
            Ok(Ok(true)) => {
                state.send_modify(|s| s.valid_until = started + ttl);
                Counters::add(&shared.counters.renewals);
                next = started + period;
            }
            Ok(Ok(false)) => {
                tracing::warn!("fredkit.lock: watchdog found the lock gone (expired or taken); marking it lost");
                mark_lost(&state, &shared.counters);
                return;
            }
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "fredkit.lock: watchdog renewal failed; retrying");
                next = Instant::now() + retry;
            }
            Err(_) => {
                next = Instant::now();
            }
        }
    }
}

/// A held lock. Dropping it releases the lock in the background (on the
/// current tokio runtime, or, when dropped on a thread without one, on the
/// runtime it was acquired on); call [`release`](Self::release) to learn
/// whether it was still held.
///
/// Ownership is by token, not by task: the guard is `Send + Sync` and may be
/// moved to another task or thread and across awaits. Whoever holds the guard
/// holds the lock.
///
/// The [`fencing_token`](Self::fencing_token) grows with every grant of the
/// resource: hand it to the storage you protect (see
/// [`FencedStore`](crate::FencedStore)) so a holder that stalled past its TTL
/// cannot overwrite a newer holder's work.
pub struct LockGuard {
    shared: Arc<Shared>,
    resource: String,
    lock_key: Key,
    token: Str,
    fencing_token: u64,
    ttl: Duration,
    state: Arc<watch::Sender<LeaseState>>,
    watchdog: Option<AbortHandle>,
    /// The runtime the guard was made on: a guard dropped on a thread
    /// without one still releases there.
    runtime: Option<tokio::runtime::Handle>,
    done: bool,
    /// When the grant was answered: the start of the hold time.
    granted_at: std::time::Instant,
}

impl fmt::Debug for LockGuard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LockGuard")
            .field("resource", &self.resource)
            .field("fencing_token", &self.fencing_token)
            .field("ttl", &self.ttl)
            .field("watchdog", &self.watchdog.is_some())
            .field("lost", &self.is_lost())
            .finish_non_exhaustive()
    }
}

impl LockGuard {
    /// The guard of a grant requested at `requested_at` (its lease is
    /// measured from then); starts the watchdog if `opts` asks for one.
    pub(crate) fn new(
        shared: Arc<Shared>,
        resource: &str,
        lock_key: Key,
        token: Str,
        fencing_token: u64,
        opts: &LockOptions,
        requested_at: Instant,
    ) -> LockGuard {
        let (state, _) = watch::channel(LeaseState {
            lost: false,
            valid_until: requested_at + opts.ttl,
        });
        let state = Arc::new(state);
        let watchdog = opts.watchdog.then(|| {
            tokio::spawn(watchdog(
                shared.clone(),
                lock_key.clone(),
                token.clone(),
                opts.ttl,
                state.clone(),
            ))
            .abort_handle()
        });
        LockGuard {
            shared,
            resource: resource.to_string(),
            lock_key,
            token,
            fencing_token,
            ttl: opts.ttl,
            state,
            watchdog,
            runtime: tokio::runtime::Handle::try_current().ok(),
            done: false,
            granted_at: std::time::Instant::now(),
        }
    }

    /// The locked resource, as passed to `acquire`.
    pub fn resource(&self) -> &str {
        &self.resource
    }

    /// The fencing token of this grant: strictly greater than the token of
    /// every earlier grant of this resource (across all clients and
    /// restarts of clients; across a lost or lagging counter given servers'
    /// clocks in sync — see the
    /// [crate docs](crate#how-tokens-are-drawn-and-the-clock-they-rely-on)).
    /// Normally the server's time of the grant in microseconds; below 2^53.
    pub fn fencing_token(&self) -> u64 {
        self.fencing_token
    }

    /// The TTL the lock was taken with (what the watchdog renews to; an
    /// [`extend`](Self::extend) with another TTL does not change it — see
    /// [`LostSignal::remaining`] for what is left of the lease).
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// This grant as plain data, for [`DistributedLock`](fredkit_core::traits::DistributedLock)
    /// callers. The lease does not keep the lock alive or release it.
    pub fn lease(&self) -> LockLease {
        LockLease {
            resource: self.resource.clone(),
            token: self.token.to_string(),
            fencing_token: self.fencing_token,
        }
    }

    /// A clonable watch on whether the lock is lost (see [`LostSignal`]).
    pub fn lost_signal(&self) -> LostSignal {
        LostSignal::new(self.state.subscribe())
    }

    /// True once the lock is known lost or its TTL ran out without renewal.
    pub fn is_lost(&self) -> bool {
        self.lost_signal().is_lost()
    }

    /// Completes when the lock is lost (see [`LostSignal::lost`]). Use it in
    /// a `select!` next to the protected work to abort it in time.
    pub async fn lost(&self) {
        self.lost_signal().lost().await
    }

    /// Resets the lock's TTL to `ttl` if this guard still holds it.
    ///
    /// `Ok(false)` means the lock had expired (and may be someone else's
    /// now): the guard is marked lost and the protected work must stop. One
    /// round trip (one script).
    ///
    /// # Errors
    ///
    /// [`ErrorKind::InvalidInput`](fredkit_core::ErrorKind::InvalidInput) for a TTL
    /// outside 1 ms ..= 24 h (as for `acquire`); connection errors: the lock may end at its old expiry. If the future
    /// is dropped, the TTL is either reset or unchanged.
    pub async fn extend(&self, ttl: Duration) -> Result<bool> {
        check_ttl(ttl)?;
        let span = tracing::debug_span!(
            "fredkit.lock.extend",
            primitive = "lock",
            outcome = tracing::field::Empty
        );
        let started = Instant::now();
        let extended = grant::extend(&self.shared, &self.lock_key, &self.token, millis(ttl))
            .instrument(span.clone())
            .await?;
        if extended {
            span.record("outcome", "extended");
            self.state.send_if_modified(|s| {
                if s.lost {
                    false
                } else {
                    s.valid_until = started + ttl;
                    true
                }
            });
            Ok(true)
        } else {
            span.record("outcome", "lost");
            mark_lost(&self.state, &self.shared.counters);
            Ok(false)
        }
    }

    /// Releases the lock if this guard still holds it; wakes waiters if any
    /// registered. `Ok(true)`: it was ours and is now free. `Ok(false)`: it
    /// had expired — perhaps someone else holds it now, and their lock was
    /// left alone. One round trip (one script; it publishes a wake-up only
    /// when someone waits).
    ///
    /// # Errors
    ///
    /// Connection errors: the lock stays until its TTL ends. If the future is
    /// dropped, the lock is either released or left to expire. If the
    /// connection dropped while the release was in flight, fred sends it
    /// again; when the first one went through, the replay reports `false`
    /// (the lock is free either way).
    pub async fn release(mut self) -> Result<bool> {
        self.done = true;
        if let Some(w) = self.watchdog.take() {
            w.abort();
        }
        self.shared.counters.hold.record_since(self.granted_at);
        let span = tracing::debug_span!(
            "fredkit.lock.release",
            primitive = "lock",
            outcome = tracing::field::Empty
        );
        let r = grant::release(&self.shared, &self.lock_key, &self.token)
            .instrument(span.clone())
            .await;
        span.record(
            "outcome",
            match &r {
                Ok(true) => "released",
                Ok(false) => "not_held",
                Err(_) => "error",
            },
        );
        r
    }
}

impl Drop for LockGuard {
    fn drop(&mut self) {
        if let Some(w) = self.watchdog.take() {
            w.abort();
        }
        if self.done {
            return;
        }
        self.shared.counters.hold.record_since(self.granted_at);
        let shared = self.shared.clone();
        let lock_key = self.lock_key.clone();
        let token = self.token.clone();
        let background = self.shared.clone();
        spawn_release(self.runtime.as_ref(), &background.background, async move {
            if let Err(e) = grant::release(&shared, &lock_key, &token).await {
                tracing::warn!(error = %e, "fredkit.lock: background release failed; the lock expires at its TTL");
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(valid_for: Duration) -> watch::Sender<LeaseState> {
        watch::channel(LeaseState {
            lost: false,
            valid_until: Instant::now() + valid_for,
        })
        .0
    }

    #[tokio::test]
    async fn lost_signal_fires_on_mark_and_counts_once() {
        let tx = state(Duration::from_secs(60));
        let signal = LostSignal::new(tx.subscribe());
        assert!(!signal.is_lost());
        assert!(signal.remaining() > Duration::from_secs(50));
        let counters = Counters::default();
        let waiting = tokio::spawn({
            let s = signal.clone();
            async move { s.lost().await }
        });
        mark_lost(&tx, &counters);
        mark_lost(&tx, &counters);
        tokio::time::timeout(Duration::from_secs(5), waiting)
            .await
            .ok()
            .and_then(|r| r.ok())
            .unwrap_or_else(|| panic!("lost() did not complete"));
        assert!(signal.is_lost());
        assert_eq!(signal.remaining(), Duration::ZERO);
        assert_eq!(counters.snapshot().lost, 1);
    }

    #[tokio::test]
    async fn lost_signal_fires_when_the_lease_runs_out_or_the_guard_is_gone() {
        let tx = state(Duration::from_millis(20));
        let signal = LostSignal::new(tx.subscribe());
        tokio::time::timeout(Duration::from_secs(5), signal.lost())
            .await
            .unwrap_or_else(|_| panic!("lost() ignored the deadline"));
        assert!(signal.is_lost());

        let tx = state(Duration::from_secs(60));
        let signal = LostSignal::new(tx.subscribe());
        drop(tx);
        assert!(signal.is_lost());
        tokio::time::timeout(Duration::from_secs(5), signal.lost())
            .await
            .unwrap_or_else(|_| panic!("lost() ignored the dropped guard"));
    }
}
