//! Invalidation from any writer: RESP3 client-side caching (`CLIENT
//! TRACKING ON BCAST PREFIX prefix:`), so a value changed by another
//! service, a script or `redis-cli` drops every instance's L1 copy.
//!
//! One dedicated RESP3 connection per cache, one per primary on a cluster
//! (fred's `start_tracking` in broadcast mode enables it on one connection
//! of a cluster only; a connection per node also reconnects on its own).
//! Redis pushes the name of every key written under the prefix by anyone;
//! the task maps `prefix:{k}` back to `k` and drops its L1 copy; a write to
//! a tag's version key, or a null invalidation (flush), flushes L1. fred
//! turns tracking off after a reconnect: a reconnect of the tracking
//! connection is a gap — L1 flushed, tracking enabled again (every primary).

use crate::l1::Local;
use fred::clients::Client;
use fred::interfaces::{
    ClientInterface, ClientLike, ClusterInterface, EventInterface, TrackingInterface,
};
use fred::types::config::{Server, ServerConfig};
use fred::types::{Builder, RespVersion};
use fredkit_conn::Redis;
use std::sync::Arc;
use std::time::Duration;

/// How other instances' L1 copies learn about writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum InvalidationMode {
    /// fredkit's own invalidation messages (pub/sub): writes made through
    /// a fredkit `Cache` only. The default.
    #[default]
    Backplane,
    /// Redis client-side caching (RESP3 `CLIENT TRACKING` in broadcast
    /// mode on the cache's prefix): writes from any client. Needs Redis 6+.
    Tracking,
    /// Both: fredkit's messages (sequence-checked, they also wake fill
    /// waiters and carry tag versions) and tracking for outside writers.
    Both,
}

/// A RESP3 connection to `node` (a cluster primary) or to the handle's
/// server (`None`), with the handle's connection settings.
fn tracking_client(redis: &Redis, node: Option<Server>) -> fredkit_core::Result<Client> {
    let base = redis.client();
    let mut config = base.client_config();
    config.version = RespVersion::RESP3;
    if let Some(server) = node {
        config.server = ServerConfig::Centralized { server };
    }
    let mut b = Builder::from_config(config);
    b.set_connection_config(base.connection_config().clone());
    if let Some(p) = base.client_reconnect_policy() {
        b.set_policy(p);
    }
    Ok(b.build()?)
}

/// Enables broadcast tracking of `prefix` on the client's connection.
async fn enable(client: &Client, prefix: &str) -> fredkit_core::Result<()> {
    client
        .client_tracking::<(), _, _>("on", None, prefix, true, false, false, false)
        .await?;
    Ok(())
}

/// The user key of a data key `prefix:{escaped}`, or `None` for another key
/// under the prefix (a lock, a tag) or a malformed one.
fn user_key(prefix: &str, key: &[u8]) -> Option<String> {
    let key = std::str::from_utf8(key).ok()?;
    let rest = key.strip_prefix(prefix)?.strip_prefix(":{")?;
    let escaped = rest.strip_suffix('}')?;
    // KeySpace writes `%`, `{`, `}` and `:` as %25, %7B, %7D, %3A.
    let mut out = String::with_capacity(escaped.len());
    let mut it = escaped.split('%');
    out.push_str(it.next()?);
    for part in it {
        let code = part.get(..2)?;
        out.push(u8::from_str_radix(code, 16).ok()? as char);
        out.push_str(part.get(2..)?);
    }
    Some(out)
}

/// Runs the tracking connections until the cache goes away — one per
/// server, one per primary on a cluster (fred's own cluster tracking enables
/// broadcast mode on one connection only, and after a reconnect may swap the
/// connection that carries it) — and calls `on_ready` once every one has
/// tracking confirmed.
pub(crate) async fn run<V: Clone + Send + Sync + 'static>(
    redis: Redis,
    local: Arc<Local<V>>,
    prefix: String,
    on_ready: impl FnOnce() + Send + 'static,
) {
    let nodes: Vec<Option<Server>> = if redis.client().is_clustered() {
        let mut delay = Duration::from_millis(50);
        loop {
            let known = redis
                .client()
                .cached_cluster_state()
                .map(|s| s.unique_primary_nodes())
                .unwrap_or_default();
            if !known.is_empty() {
                break known.into_iter().map(Some).collect();
            }
            // The shared handle has not synced the cluster yet (Redis late).
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_secs(2));
        }
    } else {
        vec![None]
    };
    let pending = Arc::new(std::sync::atomic::AtomicUsize::new(nodes.len()));
    let on_ready = Arc::new(std::sync::Mutex::new(Some(on_ready)));
    let mut tasks = Vec::new();
    for node in nodes {
        let client = match tracking_client(&redis, node) {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(error = %e, "fredkit-cache: tracking connection not built; L1 relies on its TTL for outside writes");
                return;
            }
        };
        let (local, prefix, pending, on_ready) = (
            Arc::clone(&local),
            prefix.clone(),
            Arc::clone(&pending),
            Arc::clone(&on_ready),
        );
        tasks.push(tokio::spawn(async move {
            track(client, local, prefix, move || {
                if pending.fetch_sub(1, std::sync::atomic::Ordering::AcqRel) == 1 {
                    let f = on_ready.lock().unwrap_or_else(|p| p.into_inner()).take();
                    if let Some(f) = f {
                        f();
                    }
                }
            })
            .await
        }));
    }
    // Aborting this task (the cache closed or dropped) stops the others.
    struct AbortAll(Vec<tokio::task::JoinHandle<()>>);
    impl Drop for AbortAll {
        fn drop(&mut self) {
            for t in &self.0 {
                t.abort();
            }
        }
    }
    let _all = AbortAll(tasks);
    futures::future::pending::<()>().await;
}

/// One tracking connection: enable (retrying), then drop L1 copies on every
/// invalidation; a reconnect is a gap (flush, enable again, flush).
async fn track<V: Clone + Send + Sync + 'static>(
    client: Client,
    local: Arc<Local<V>>,
    prefix: String,
    on_ready: impl FnOnce() + Send,
) {
    struct Quit(Client);
    impl Drop for Quit {
        fn drop(&mut self) {
            let c = self.0.clone();
            tokio::spawn(async move {
                let _ = c.quit().await;
            });
        }
    }
    let _conn = client.init().await;
    let client = Quit(client);
    let client = &client.0;
    let mut invalidations = client.invalidation_rx();
    let mut reconnects = client.reconnect_rx();
    let tag_prefix = format!("{prefix}:tag:");
    let track = format!("{prefix}:");
    let mut delay = Duration::from_millis(50);
    while let Err(e) = enable(client, &track).await {
        tracing::debug!(error = %e, "fredkit-cache: CLIENT TRACKING not confirmed; retrying");
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_secs(2));
    }
    on_ready();
    loop {
        tokio::select! {
            inv = invalidations.recv() => match inv {
                Ok(inv) => {
                    if inv.keys.is_empty() {
                        local.flush_l1("tracking: flush");
                    }
                    for k in &inv.keys {
                        match user_key(&prefix, k.as_bytes()) {
                            Some(u) => local.remove_l1(&u),
                            None if k.as_bytes().starts_with(tag_prefix.as_bytes()) => {
                                local.flush_l1("tracking: a tag changed");
                            }
                            None => {}
                        }
                    }
                }
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                    local.flush_l1("tracking: lag");
                }
                Err(_) => return,
            },
            r = reconnects.recv() => match r {
                Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                    // fred turned tracking off: what was written meanwhile
                    // was not seen.
                    local.flush_l1("tracking: reconnect");
                    incr_gap(&local);
                    let mut delay = Duration::from_millis(20);
                    while let Err(e) = enable(client, &track).await {
                        tracing::debug!(error = %e, "fredkit-cache: CLIENT TRACKING after a reconnect not confirmed; retrying");
                        local.flush_l1("tracking: still off");
                        tokio::time::sleep(delay).await;
                        delay = (delay * 2).min(Duration::from_secs(2));
                    }
                    // Writes between the flush and tracking being on again.
                    local.flush_l1("tracking: back on");
                }
                Err(_) => return,
            },
        }
    }
}

fn incr_gap<V>(local: &Local<V>) {
    crate::metrics::incr(&local.metrics.tracking_reconnects);
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use fredkit_core::KeySpace;

    #[test]
    fn data_keys_map_back_to_user_keys() {
        let ks = KeySpace::new("app:c").unwrap();
        for k in ["plain", "a:b", "{x}%y", "é"] {
            let data = ks.tagged(k, [""; 0]).unwrap();
            assert_eq!(
                user_key("app:c", data.as_bytes()).as_deref(),
                Some(k),
                "{data}"
            );
        }
        assert_eq!(user_key("app:c", b"app:c:lock:{x}"), None);
        assert_eq!(user_key("app:c", b"other:{x}"), None);
    }
}
