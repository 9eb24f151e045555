//! Local waiters and the one subscription per manager that wakes them.
//!
//! A waiter registers a [`Slot`] under the name of the resource's waiter
//! flag key (the release scripts publish exactly that name). One
//! fredkit-pubsub subscription per manager, made on first wait, routes each
//! wake-up to its slot and wakes one local waiter; a gap or lag (messages
//! possibly lost) wakes every local waiter so they retry at once.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use fred::bytes::Bytes;
use fredkit_conn::Redis;
use fredkit_core::{Error, Result};
use fredkit_pubsub::{Delivery, Mode, PubSubOptions, Subscriber, Subscription};
use futures::future::{BoxFuture, FutureExt, Shared};
use futures::StreamExt;
use tokio::sync::{Notify, OnceCell};
use tokio::task::JoinHandle;

use std::future::Future;

use rand::Rng;
use tokio::time::Instant;

use crate::metrics::Counters;
use crate::options::LockOptions;

/// The outcome of one try of a lock or a permit.
pub(crate) enum Attempt {
    /// Granted with this fencing token (or, for a semaphore, permits held).
    Granted(u64),
    /// Held by someone else for about this much longer.
    Held(Duration),
}

/// Where local waiters of one key wait.
#[derive(Debug, Default)]
pub(crate) struct Slot {
    pub(crate) notify: Notify,
}

#[derive(Default)]
struct Registry {
    /// key -> (the key, shared with registrations; the slot; registrations)
    slots: HashMap<Arc<str>, (Arc<str>, Arc<Slot>, usize)>,
}

/// The attempt to subscribe in flight (or the last one), shared by callers.
type SubscribeAttempt = Shared<BoxFuture<'static, std::result::Result<(), String>>>;

pub(crate) struct Waiters {
    registry: Mutex<Registry>,
    listener: OnceCell<Listener>,
    attempt: Mutex<Option<SubscribeAttempt>>,
    channel: String,
    redis: Redis,
    counters: Arc<Counters>,
    /// Set by `close`: no subscription is made any more; waiters poll.
    closed: AtomicBool,
}

fn lock_attempt(m: &Mutex<Option<SubscribeAttempt>>) -> MutexGuard<'_, Option<SubscribeAttempt>> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The live subscription: dropping it stops the dispatch task and (through
/// fredkit-pubsub) unsubscribes; `Waiters::close` takes both out first.
struct Listener {
    subscriber: Mutex<Option<Subscriber>>,
    task: Mutex<Option<JoinHandle<()>>>,
}

impl Drop for Listener {
    fn drop(&mut self) {
        if let Some(t) = take(&self.task) {
            t.abort();
        }
    }
}

fn take<T>(m: &Mutex<Option<T>>) -> Option<T> {
    m.lock().unwrap_or_else(|p| p.into_inner()).take()
}

fn lock(m: &Mutex<Registry>) -> MutexGuard<'_, Registry> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Waiters {
    /// The waiters of one manager: wake-ups on `channel`, subscribed through
    /// `redis`, counted in `counters`.
    pub(crate) fn new(channel: String, redis: Redis, counters: Arc<Counters>) -> Self {
        Waiters {
            registry: Mutex::new(Registry::default()),
            listener: OnceCell::new(),
            attempt: Mutex::new(None),
            channel,
            redis,
            counters,
            closed: AtomicBool::new(false),
        }
    }

    /// Whether `close` was called.
    pub(crate) fn is_closed(&self) -> bool {
        self.closed.load(Ordering::SeqCst)
    }

    /// Ends the subscription for good: an attempt in flight is waited for
    /// (at most `limit`), the dispatch task is stopped, and the subscriber
    /// is let go of — waited for (at most `limit` again) until fredkit-pubsub
    /// has unsubscribed and dropped its connection, whose `QUIT` then
    /// completes in the background within one round trip. Local waiters are
    /// woken so they retry at once and then poll. Idempotent.
    pub(crate) async fn close(&self, limit: Duration) {
        self.closed.store(true, Ordering::SeqCst);
        let attempt = lock_attempt(&self.attempt).clone();
        if let Some(a) = attempt {
            let _ = tokio::time::timeout(limit, a).await;
        }
        self.wake_all();
        let Some(listener) = self.listener.get() else {
            return;
        };
        if let Some(task) = take(&listener.task) {
            task.abort();
            let _ = task.await;
        }
        if let Some(subscriber) = take(&listener.subscriber) {
            let mut gone = subscriber.gaps();
            drop(subscriber);
            let _ =
                tokio::time::timeout(limit, async { while gone.changed().await.is_ok() {} }).await;
        }
    }

    pub(crate) fn channel(&self) -> &str {
        &self.channel
    }

    /// Makes sure the manager's subscription is up (one round trip the first
    /// time, none after). Plain pub/sub on purpose, also on a cluster: the
    /// scripts publish from the resource's node and the cluster bus forwards
    /// plain messages to every node, so one subscription anywhere hears the
    /// wake-ups of every resource (sharded channels would need one
    /// subscription per slot).
    ///
    /// The subscription is made by a task of its own, at most one attempt at
    /// a time, shared by every caller: a caller that stops waiting after
    /// `limit` (a short wait, a cancelled acquire) does not abort it half-way,
    /// so the next waiter finds it up instead of starting (and dropping)
    /// another connection. Each attempt is bounded by the connect and command
    /// timeouts; after a failed one, the next caller starts a new one.
    async fn listen(self: &Arc<Self>, limit: Duration) -> Result<()> {
        if self.is_closed() {
            return Err(Error::connection(
                "the lock manager was closed: no wake-up subscription",
            ));
        }
        if self.listener.initialized() {
            return Ok(());
        }
        let attempt = {
            let mut current = lock_attempt(&self.attempt);
            match &*current {
                Some(a) if a.peek().is_none() => a.clone(),
                _ => {
                    let me = self.clone();
                    let task = tokio::spawn(async move {
                        me.listener
                            .get_or_try_init(|| me.subscribe())
                            .await
                            .map(|_| ())
                            .map_err(|e| e.to_string())
                    });
                    let a = async move {
                        match task.await {
                            Ok(r) => r,
                            Err(e) => Err(format!("the subscribing task ended: {e}")),
                        }
                    }
                    .boxed()
                    .shared();
                    *current = Some(a.clone());
                    a
                }
            }
        };
        // Never wait for the subscription longer than the caller waits for
        // the lock.
        match tokio::time::timeout(limit, attempt).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(Error::connection(format!(
                "no wake-up subscription: {e}"
            ))),
            Err(_) => Err(Error::timeout(format!(
                "the wake-up subscription was not confirmed within {limit:?} (still trying in the background)"
            ))),
        }
    }

    async fn subscribe(self: &Arc<Self>) -> Result<Listener> {
        let subscriber = Subscriber::with_codec(
            &self.redis,
            fredkit_core::MsgPack,
            PubSubOptions::default().mode(Mode::Plain),
        )
        .await?;
        let subscription = subscriber.subscribe_bytes(&self.channel).await?;
        if self.is_closed() {
            // Closed meanwhile: let it go at once (dropping both ends it).
            return Err(Error::connection(
                "the lock manager was closed while it subscribed",
            ));
        }
        let task = tokio::spawn(dispatch(
            Arc::downgrade(self),
            Arc::downgrade(&self.counters),
            subscription,
        ));
        Ok(Listener {
            subscriber: Mutex::new(Some(subscriber)),
            task: Mutex::new(Some(task)),
        })
    }

    /// Registers a local waiter on `key` until the returned registration is
    /// dropped.
    fn register(self: &Arc<Self>, key: &str) -> Registration {
        let mut reg = lock(&self.registry);
        let (name, slot) = match reg.slots.get_mut(key) {
            Some((name, slot, refs)) => {
                *refs += 1;
                (name.clone(), slot.clone())
            }
            None => {
                let name: Arc<str> = Arc::from(key);
                let slot = Arc::new(Slot::default());
                reg.slots
                    .insert(name.clone(), (name.clone(), slot.clone(), 1));
                (name, slot)
            }
        };
        Registration {
            waiters: self.clone(),
            name,
            slot,
        }
    }

    fn wake_one(&self, key: &str) -> bool {
        match lock(&self.registry).slots.get(key) {
            Some((_, slot, _)) => {
                slot.notify.notify_one();
                true
            }
            None => false,
        }
    }

    fn wake_all(&self) {
        for (_, slot, _) in lock(&self.registry).slots.values() {
            slot.notify.notify_waiters();
        }
    }
}

/// A local waiter's place in the registry.
pub(crate) struct Registration {
    waiters: Arc<Waiters>,
    name: Arc<str>,
    pub(crate) slot: Arc<Slot>,
}

impl Drop for Registration {
    fn drop(&mut self) {
        let mut reg = lock(&self.waiters.registry);
        if let Some((_, _, refs)) = reg.slots.get_mut(&*self.name) {
            *refs = refs.saturating_sub(1);
            if *refs == 0 {
                reg.slots.remove(&*self.name);
            }
        }
    }
}

async fn dispatch(
    waiters: Weak<Waiters>,
    counters: Weak<Counters>,
    mut subscription: Subscription<Bytes>,
) {
    while let Some(delivery) = subscription.next().await {
        let Some(w) = waiters.upgrade() else { return };
        match delivery {
            Delivery::Message(m) => {
                let Ok(payload) = m.payload else { continue };
                let Ok(key) = std::str::from_utf8(&payload) else {
                    tracing::warn!("fredkit.lock: ignoring a non-UTF-8 wake-up message");
                    continue;
                };
                if w.wake_one(key) {
                    if let Some(c) = counters.upgrade() {
                        Counters::add(&c.wakeups);
                    }
                }
            }
            // Messages may have been lost: every waiter retries now.
            _ => w.wake_all(),
        }
    }
}

/// Hands a consumed wake-up on to another local waiter when dropped armed.
struct PassOn {
    slot: Arc<Slot>,
    armed: bool,
}

impl Drop for PassOn {
    fn drop(&mut self) {
        if self.armed {
            self.slot.notify.notify_one();
        }
    }
}

/// One try made by [`wait_for`]: whether it is a retry, and how long the
/// caller keeps waiting from now.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Try {
    pub(crate) retry: bool,
    pub(crate) remaining: Duration,
}

/// What [`wait_for`] ended with.
pub(crate) enum Waited {
    /// Granted (the attempt's value) by a try sent at `at`, after `tries` tries.
    Granted { value: u64, at: Instant, tries: u32 },
    /// Still busy at the deadline after `tries` tries.
    TimedOut { tries: u32 },
}

impl Waiters {
    /// The waiting loop shared by locks and semaphores: subscribe (once per
    /// manager, bounded by the wait), register under `key` (the name the
    /// release script publishes), then try until granted or `opts.wait` runs
    /// out, sleeping between tries until a wake-up, the holder's expiry (plus up
    /// to 2 ms jitter) or the fallback poll, whichever comes first.
    pub(crate) async fn wait_for<F, Fut>(
        self: &Arc<Self>,
        key: &str,
        opts: &LockOptions,
        mut attempt: F,
    ) -> Result<Waited>
    where
        F: FnMut(Try) -> Fut,
        Fut: Future<Output = Result<Attempt>>,
    {
        let deadline = Instant::now() + opts.wait;
        if let Err(e) = self.listen(opts.wait).await {
            if self.is_closed() {
                tracing::debug!("fredkit.lock: the manager is closed; waiting by polling only");
            } else {
                tracing::warn!(error = %e, "fredkit.lock: no wake-up subscription; waiting by polling only");
            }
        }
        let registration = self.register(key);
        // Armed from a wake-up until the retry it caused has an answer: if this
        // waiter is cancelled (or its retry fails) in between, the wake-up goes
        // to another local waiter instead of being lost until the poll.
        let mut pass_on = PassOn {
            slot: registration.slot.clone(),
            armed: false,
        };
        let mut polls = 0u32;
        let mut tries = 0u32;
        loop {
            // Enabled before the try: a wake-up arriving during it is kept.
            let notified = registration.slot.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let at = Instant::now();
            let this = Try {
                retry: tries > 0,
                remaining: deadline.saturating_duration_since(at),
            };
            tries += 1;
            let answer = attempt(this).await?;
            pass_on.armed = false;
            match answer {
                Attempt::Granted(value) => return Ok(Waited::Granted { value, at, tries }),
                Attempt::Held(left) => {
                    Counters::add(&self.counters.contended);
                    let now = Instant::now();
                    if now >= deadline {
                        Counters::add(&self.counters.timed_out);
                        return Ok(Waited::TimedOut { tries });
                    }
                    let poll = opts.poll.delay(polls).max(Duration::from_millis(1));
                    polls = polls.saturating_add(1);
                    let jitter = Duration::from_micros(rand::thread_rng().gen_range(0..2_000));
                    let sleep = (deadline - now).min(poll).min(left + jitter);
                    tokio::select! {
                        _ = &mut notified => pass_on.armed = true,
                        _ = tokio::time::sleep(sleep) => {}
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    /// Waiters on a port nobody listens on: the subscription fails, so
    /// waiters are woken only by `wake_one` (or the poll, set to a minute).
    async fn offline_waiters() -> Arc<Waiters> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let config = fredkit_conn::RedisConfig::from_url(&format!(
            "redis://127.0.0.1:{port}?command_timeout=100ms&connect_timeout=100ms"
        ))
        .unwrap();
        let redis = Redis::connect(config).await.unwrap();
        Arc::new(Waiters::new(
            "t:waiters:wake".into(),
            redis,
            Arc::new(Counters::default()),
        ))
    }

    fn slow_poll() -> LockOptions {
        LockOptions::builder()
            .wait(Duration::from_secs(60))
            .poll_backoff(
                fredkit_core::Backoff::builder()
                    .initial(Duration::from_secs(60))
                    .max(Duration::from_secs(60))
                    .jitter(false)
                    .build()
                    .unwrap(),
            )
            .build()
            .unwrap()
    }

    /// A release wakes one local waiter. If that waiter's `acquire` is
    /// cancelled while it retries, the wake-up goes to another local waiter
    /// instead of being lost until the fallback poll.
    #[tokio::test]
    async fn a_woken_waiter_cancelled_mid_retry_passes_the_wake_up_on() {
        let w = offline_waiters().await;
        let key = "t:waiters:{r}:lock";
        let opts = slow_poll();
        let held = || Ok(Attempt::Held(Duration::from_secs(60)));

        // A: busy at first, then its retry hangs (a slow Redis) until cancelled.
        let a_tries = Arc::new(AtomicU32::new(0));
        let a = tokio::spawn({
            let (w, opts, a_tries) = (w.clone(), opts.clone(), a_tries.clone());
            async move {
                w.wait_for(key, &opts, |_| {
                    let n = a_tries.fetch_add(1, Ordering::SeqCst);
                    async move {
                        if n == 0 {
                            held()
                        } else {
                            std::future::pending().await
                        }
                    }
                })
                .await
                .map(|_| ())
            }
        });
        while a_tries.load(Ordering::SeqCst) == 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        // B: busy until woken, then granted.
        let b_tries = Arc::new(AtomicU32::new(0));
        let b = tokio::spawn({
            let (w, opts, b_tries) = (w.clone(), opts.clone(), b_tries.clone());
            async move {
                w.wait_for(key, &opts, |_| {
                    let n = b_tries.fetch_add(1, Ordering::SeqCst);
                    async move {
                        if n == 0 {
                            held()
                        } else {
                            Ok(Attempt::Granted(7))
                        }
                    }
                })
                .await
            }
        });
        while b_tries.load(Ordering::SeqCst) == 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        // The release's message: one wake-up, to the longest waiter (A).
        assert!(w.wake_one(key));
        while a_tries.load(Ordering::SeqCst) < 2 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert_eq!(b_tries.load(Ordering::SeqCst), 1, "only A was woken");
        a.abort();
        let _ = a.await;
        let got = tokio::time::timeout(Duration::from_secs(10), b)
            .await
            .expect("B never got the wake-up A was cancelled with")
            .unwrap()
            .unwrap();
        assert!(matches!(got, Waited::Granted { value: 7, .. }));
    }
}
