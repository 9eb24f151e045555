//! Local waiters and the one subscription per manager that wakes them.
//!
//! A waiter registers a [`Slot`] under the name of the resource's waiter
//! flag key (the release scripts publish exactly that name). One
//! fredkit-pubsub subscription per manager, made on first wait, routes each
//! wake-up to its slot and wakes one local waiter; a gap or lag (messages
//! possibly lost) wakes every local waiter so they retry at once.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use fred::bytes::Bytes;
use fredkit_conn::Redis;
use fredkit_core::{Error, Result};
use fredkit_pubsub::{Delivery, Mode, PubSubOptions, Subscriber, Subscription};
use futures::StreamExt;
use tokio::sync::{Notify, OnceCell};
use tokio::task::JoinHandle;

use crate::metrics::Counters;

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

pub(crate) struct Waiters {
    registry: Mutex<Registry>,
    listener: OnceCell<Listener>,
    channel: String,
}

/// The live subscription: dropping it stops the dispatch task and (through
/// fredkit-pubsub) unsubscribes.
struct Listener {
    _subscriber: Subscriber,
    task: JoinHandle<()>,
}

impl Drop for Listener {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn lock(m: &Mutex<Registry>) -> MutexGuard<'_, Registry> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Waiters {
    pub(crate) fn new(channel: String) -> Self {
        Waiters {
            registry: Mutex::new(Registry::default()),
            listener: OnceCell::new(),
            channel,
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
    pub(crate) async fn listen(
        self: &Arc<Self>,
        redis: &Redis,
        counters: &Arc<Counters>,
        limit: Duration,
    ) -> Result<()> {
        let init = self.listener.get_or_try_init(|| async {
            let subscriber = Subscriber::with_codec(
                redis,
                fredkit_core::MsgPack,
                PubSubOptions::default().mode(Mode::Plain),
            )
            .await?;
            let subscription = subscriber.subscribe_bytes(&self.channel).await?;
            let task = tokio::spawn(dispatch(
                Arc::downgrade(self),
                Arc::downgrade(counters),
                subscription,
            ));
            Ok::<_, fredkit_core::Error>(Listener {
                _subscriber: subscriber,
                task,
            })
        });
        // Never wait for the subscription longer than the caller waits for
        // the lock; a dropped attempt leaves the cell empty for the next one.
        match tokio::time::timeout(limit, init).await {
            Ok(r) => r.map(|_| ()),
            Err(_) => Err(Error::timeout(format!(
                "the wake-up subscription was not confirmed within {limit:?}"
            ))),
        }
    }

    /// Registers a local waiter on `key` until the returned registration is
    /// dropped.
    pub(crate) fn register(self: &Arc<Self>, key: &str) -> Registration {
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
