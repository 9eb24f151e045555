//! Following a Sentinel failover the moment the sentinels announce it.
//!
//! fred finds the primary through the sentinels only when it (re)connects.
//! After a *planned* failover (`SENTINEL FAILOVER`, what every upgrade
//! does) the old primary keeps answering — and acknowledging writes that
//! the new primary never sees — until the sentinels turn it into a replica,
//! about 10 s later (they wait 8 s before reconfiguring a primary that
//! still reports itself as one). Measured here before this module: 99
//! acknowledged INCRs lost over ~11 s, and fencing tokens went backwards.
//!
//! So a [`Redis`](crate::Redis) handle on a Sentinel topology subscribes to
//! `+switch-master` on every configured sentinel (one subscriber connection
//! each: any one of them may be down). When a sentinel announces a new
//! primary for our service, every connection of the handle — the shared
//! pool, [`dedicated`](crate::Redis::dedicated) and
//! [`subscriber`](crate::Redis::subscriber) connections — is reconnected
//! until it is on the announced address. fred re-resolves through the
//! sentinels on reconnect; a sentinel that has not learnt of the switch yet
//! can still name the old primary, so a connection that lands there is
//! reconnected again ([`RETRY_EVERY`]) for up to [`FOLLOW_FOR`].
//!
//! What this cannot close: between the replica's promotion and the
//! announcement (the sentinels poll the promoted replica's role once a
//! second while failing over, so up to ~1 s) the old primary still
//! acknowledges writes, and they are lost when it is demoted. Writes that
//! must survive a failover are confirmed by a replica before they count:
//! [`Redis::confirmed`](crate::Redis::confirmed) (`WAIT`).

use crate::config::{RedisConfig, Topology};
use crate::fred_config::{builder, Purpose};
use fred::clients::{Pool, SubscriberClient};
use fred::interfaces::{ClientLike, EventInterface, PubsubInterface};
use fred::prelude::{ServerConfig, Value};
use fred::types::ConnectHandle;
use fredkit_core::Result;
use std::time::Duration;
use tokio::sync::watch;
use tokio::task::{AbortHandle, JoinSet};

/// The sentinels' channel announcing a new primary:
/// `<service> <old-ip> <old-port> <new-ip> <new-port>`.
const SWITCH_CHANNEL: &str = "+switch-master";
/// How long a connection keeps trying to land on the announced primary.
pub(crate) const FOLLOW_FOR: Duration = Duration::from_secs(30);
/// Pause between two reconnections that landed on another server (a
/// sentinel that had not learnt of the switch yet answered).
const RETRY_EVERY: Duration = Duration::from_millis(50);

/// The primary the sentinels announced last, numbered so that followers
/// can tell a new announcement from the one they are handling.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub(crate) struct Announced {
    pub(crate) generation: u64,
    pub(crate) host: String,
    pub(crate) port: u16,
}

/// The sentinel listener of one `Redis` handle.
pub(crate) struct SwitchWatch {
    announced: watch::Receiver<Announced>,
    tasks: Vec<AbortHandle>,
    /// The sentinel subscriber connections, closed with the watch.
    clients: Vec<(SubscriberClient, ConnectHandle)>,
}

impl SwitchWatch {
    /// Starts listening when `config` is a Sentinel topology; `None` otherwise.
    /// Never waits for a sentinel: subscriptions are retried in the background.
    pub(crate) fn start(config: &RedisConfig, pool: &Pool) -> Result<Option<SwitchWatch>> {
        let Topology::Sentinel {
            sentinels,
            service_name,
            sentinel_username,
            sentinel_password,
        } = config.topology()
        else {
            return Ok(None);
        };
        let (tx, announced) = watch::channel(Announced::default());
        let mut clients = Vec::with_capacity(sentinels.len());
        let mut tasks = Vec::with_capacity(sentinels.len() + 1);
        for node in sentinels {
            let mut b = builder(config, Purpose::Subscriber)?;
            let mut fc = b.get_config().cloned().unwrap_or_default();
            fc.server = ServerConfig::new_centralized(node.host.clone(), node.port);
            fc.username = sentinel_username.clone();
            fc.password = sentinel_password.as_ref().map(|p| p.expose().to_string());
            fc.database = None;
            b.set_config(fc);
            let client = b.build_subscriber_client()?;
            let messages = client.message_rx();
            let handle = client.connect();
            let resubscribe = client.manage_subscriptions();
            tasks.push(resubscribe.abort_handle());
            tasks.push(
                tokio::spawn(listen(
                    client.clone(),
                    messages,
                    service_name.clone(),
                    node.to_string(),
                    tx.clone(),
                ))
                .abort_handle(),
            );
            clients.push((client, handle));
        }
        let reconnect_wait = config
            .connect_timeout()
            .saturating_add(Duration::from_secs(1));
        tasks.push(
            tokio::spawn(follow_pool(pool.clone(), announced.clone(), reconnect_wait))
                .abort_handle(),
        );
        Ok(Some(SwitchWatch {
            announced,
            tasks,
            clients,
        }))
    }

    /// A receiver of announcements, for a connection to follow them.
    pub(crate) fn subscribe(&self) -> watch::Receiver<Announced> {
        self.announced.clone()
    }

    /// Stops listening and closes the sentinel connections.
    pub(crate) fn stop(&mut self) {
        for t in self.tasks.drain(..) {
            t.abort();
        }
        let clients: Vec<_> = self.clients.drain(..).collect();
        if clients.is_empty() {
            return;
        }
        let close = async move {
            for (client, handle) in clients {
                let _ = tokio::time::timeout(Duration::from_secs(1), client.quit()).await;
                handle.abort();
            }
        };
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(close);
        }
    }
}

impl Drop for SwitchWatch {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Subscribes to `+switch-master` on one sentinel (retrying until it
/// answers) and publishes every announcement for `service`.
async fn listen(
    client: SubscriberClient,
    mut messages: tokio::sync::broadcast::Receiver<fred::types::Message>,
    service: String,
    sentinel: String,
    tx: watch::Sender<Announced>,
) {
    // fred's `manage_subscriptions` resubscribes after a reconnect, but only
    // to channels whose SUBSCRIBE succeeded once: retry the first one.
    let subscribe = async {
        loop {
            match client.subscribe(SWITCH_CHANNEL).await {
                Ok(()) => break,
                Err(e) => {
                    tracing::debug!(sentinel = %sentinel, error = %e, "fredkit: sentinel subscription failed; retrying");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            }
        }
    };
    tokio::pin!(subscribe);
    let mut subscribed = false;
    loop {
        let message = tokio::select! {
            () = &mut subscribe, if !subscribed => {
                subscribed = true;
                continue;
            }
            m = messages.recv() => m,
        };
        let message = match message {
            Ok(m) => m,
            Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
            Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
        };
        if &*message.channel != SWITCH_CHANNEL {
            continue;
        }
        let Some((host, port)) = parse_switch(&message.value, &service) else {
            continue;
        };
        tx.send_if_modified(|last| {
            if last.host == host && last.port == port {
                return false; // the same switch, announced by another sentinel
            }
            tracing::info!(
                sentinel = %sentinel,
                service = %service,
                new_primary = %format_args!("{host}:{port}"),
                "fredkit: the sentinels announced a new primary; moving every connection to it"
            );
            *last = Announced {
                generation: last.generation.saturating_add(1),
                host,
                port,
            };
            true
        });
    }
}

/// `<service> <old-ip> <old-port> <new-ip> <new-port>` -> the new address,
/// if the message is about `service`.
fn parse_switch(value: &Value, service: &str) -> Option<(String, u16)> {
    let text = value.as_str()?;
    let mut parts = text.split_ascii_whitespace();
    if parts.next()? != service {
        return None;
    }
    let _old_host = parts.next()?;
    let _old_port = parts.next()?;
    let host = parts.next()?.to_string();
    let port = parts.next()?.parse().ok()?;
    Some((host, port))
}

/// Moves every connection of `pool` to each announced primary.
async fn follow_pool(
    pool: Pool,
    mut announced: watch::Receiver<Announced>,
    reconnect_wait: Duration,
) {
    while announced.changed().await.is_ok() {
        let target = announced.borrow_and_update().clone();
        let mut moves = JoinSet::new();
        for client in pool.clients() {
            let client = client.clone();
            let target = target.clone();
            let announced = announced.clone();
            moves.spawn(async move { move_to(&client, &target, &announced, reconnect_wait).await });
        }
        while moves.join_next().await.is_some() {}
    }
}

/// Moves one connection to each announced primary (for dedicated and
/// subscriber connections; runs until aborted).
pub(crate) async fn follow<C: ClientLike>(
    client: C,
    mut announced: watch::Receiver<Announced>,
    reconnect_wait: Duration,
) {
    // A connection made after an announcement resolves the primary through
    // the sentinels as it connects: only later announcements concern it.
    announced.borrow_and_update();
    while announced.changed().await.is_ok() {
        let target = announced.borrow_and_update().clone();
        move_to(&client, &target, &announced, reconnect_wait).await;
    }
}

/// Reconnects `client` until it is connected to `target`, for at most
/// [`FOLLOW_FOR`] or until a newer primary is announced.
async fn move_to<C: ClientLike>(
    client: &C,
    target: &Announced,
    announced: &watch::Receiver<Announced>,
    reconnect_wait: Duration,
) {
    let deadline = tokio::time::Instant::now() + FOLLOW_FOR;
    let mut tries = 0u32;
    loop {
        if is_on(client, target) {
            if tries > 0 {
                tracing::debug!(primary = %format_args!("{}:{}", target.host, target.port), tries, "fredkit: connection moved to the new primary");
            }
            return;
        }
        if announced.borrow().generation != target.generation {
            return; // a newer announcement: the caller handles it
        }
        if tokio::time::Instant::now() >= deadline {
            tracing::warn!(
                primary = %format_args!("{}:{}", target.host, target.port),
                connected_to = ?client.active_connections(),
                "fredkit: could not move a connection to the primary the sentinels announced (does the address they announce differ from the one this client reaches? see `replica-announce-ip`); fred's own reconnects go on"
            );
            return;
        }
        tries = tries.saturating_add(1);
        if let Ok(Err(e)) = tokio::time::timeout(reconnect_wait, client.force_reconnection()).await
        {
            tracing::debug!(error = %e, "fredkit: reconnection towards the new primary failed; retrying");
        }
        if !is_on(client, target) {
            tokio::time::sleep(RETRY_EVERY).await;
        }
    }
}

/// Whether `client` is connected to `target` (fred records the server of
/// a Sentinel client's connection once it is set up).
fn is_on<C: ClientLike>(client: &C, target: &Announced) -> bool {
    client.is_connected()
        && client
            .active_connections()
            .iter()
            .any(|s| s.port == target.port && *s.host == *target.host)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_new_address_of_our_service_only() {
        let v = Value::from("mymaster 127.0.0.1 6379 127.0.0.1 6380");
        assert_eq!(
            parse_switch(&v, "mymaster"),
            Some(("127.0.0.1".into(), 6380))
        );
        assert_eq!(parse_switch(&v, "other"), None);
        assert_eq!(
            parse_switch(&Value::from("mymaster 1 2 3"), "mymaster"),
            None
        );
        assert_eq!(
            parse_switch(&Value::from("mymaster a 1 b x"), "mymaster"),
            None
        );
        assert_eq!(parse_switch(&Value::Null, "mymaster"), None);
    }
}
