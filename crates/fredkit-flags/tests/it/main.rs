//! fredkit-flags against real servers, standalone and a 3-master cluster:
//! one test binary (sync, rollout, expiry, admin, bad data, ACL, CLI,
//! OpenFeature, faults).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod admin;
#[cfg(feature = "cli")]
mod cli;
mod faults;
#[cfg(feature = "openfeature")]
mod openfeature;
mod rollout;
mod sync;

use std::time::{Duration, Instant};

use fredkit_conn::Redis;
use fredkit_flags::{Flags, FlagsOptions};
use fredkit_testkit::{connect, shared_url, Topology};

/// A new connection to the shared server of `topology`.
pub(crate) async fn conn(topology: Topology) -> Redis {
    connect(&shared_url(topology).unwrap()).await.unwrap()
}

/// An instance on its own connection that makes no periodic round trip
/// during a test (sync interval 1 hour): what it learns, it learns from
/// change messages or gaps.
pub(crate) async fn instance(topology: Topology, prefix: &str) -> Flags {
    let redis = conn(topology).await;
    Flags::with_options(
        &redis,
        prefix,
        FlagsOptions::default().sync_interval(Duration::from_secs(3600)),
    )
    .await
    .unwrap()
}

/// Polls `check` every 5 ms until it holds or `deadline` passes (a
/// generous bound, never the property under test); returns how long it took.
pub(crate) async fn eventually(
    what: &str,
    deadline: Duration,
    mut check: impl FnMut() -> bool,
) -> Duration {
    let started = Instant::now();
    while !check() {
        assert!(
            started.elapsed() < deadline,
            "{what}: not true after {deadline:?}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    started.elapsed()
}

/// The server's clock (`TIME`) in Unix ms.
pub(crate) async fn server_ms(redis: &Redis) -> u64 {
    use fred::interfaces::ClientLike;
    let v: Vec<String> = redis
        .client()
        .custom(fred::cmd!("TIME"), Vec::<String>::new())
        .await
        .unwrap();
    v[0].parse::<u64>().unwrap() * 1000 + v[1].parse::<u64>().unwrap() / 1000
}
