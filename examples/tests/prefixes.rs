#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! One way to give a prefix everywhere: every primitive of the facade takes
//! what `fredkit_testkit::unique_prefix` returns as is, a `KeySpace` (owned
//! or borrowed) and a `&str`; a bad prefix is `InvalidInput` naming it.

use fredkit::cache::{Cache, CacheOptions};
use fredkit::collections::{Feed, Presence, TtlMap};
use fredkit::core::{ErrorKind, FailMode, KeySpace};
use fredkit::lock::{FencedCounter, FencedStore, LockManager};
use fredkit::ratelimit::{Limit, Limiter, LoginThrottle};
use fredkit::revocation::{RevocationOptions, Revocations};
use fredkit::streams::StreamKeys;
use fredkit_testkit::{shared_url, unique_prefix, Topology};
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_primitive_takes_every_prefix_form() {
    let redis = fredkit_testkit::connect(&shared_url(Topology::Standalone).unwrap())
        .await
        .unwrap();
    let testkit = unique_prefix("prefix forms"); // "t:prefix_forms:0a1b2c3d:"
    let ks = KeySpace::new(testkit.as_str()).unwrap();
    let ttl = Duration::from_secs(60);

    // What testkit hands out, as is.
    let _ = LockManager::new(&redis, &testkit).unwrap();
    let _ = FencedStore::new(&redis, testkit.as_str()).unwrap();
    let _ = FencedCounter::new(&redis, testkit.clone()).unwrap();
    let _ = Limiter::builder(&redis, &testkit)
        .limit(Limit::gcra(1, ttl))
        .fail_mode(FailMode::Open)
        .build()
        .unwrap();
    let _ = LoginThrottle::builder(&redis, &testkit)
        .fail_mode(FailMode::Closed)
        .build()
        .unwrap();
    let _ = StreamKeys::new(&testkit, "orders").unwrap();
    let _: TtlMap<String> = TtlMap::new(&redis, &testkit, ttl).unwrap();
    let _: Feed<String> = Feed::new(&redis, &testkit, 10, ttl).unwrap();
    let _ = Presence::new(&redis, &testkit, ttl).unwrap();
    let cache: Cache<String> = Cache::new(&redis, CacheOptions::builder(&testkit).build().unwrap())
        .await
        .unwrap();
    let revocations = Revocations::new(
        &redis,
        RevocationOptions::builder(FailMode::Closed)
            .prefix(&testkit)
            .build()
            .unwrap(),
    )
    .await
    .unwrap();

    // A KeySpace, owned or borrowed: the same keys as the string form.
    let _ = LockManager::new(&redis, &ks).unwrap();
    let _ = Limiter::builder(&redis, ks.clone())
        .limit(Limit::gcra(1, ttl))
        .fail_mode(FailMode::Open)
        .build()
        .unwrap();
    assert_eq!(
        StreamKeys::new(&ks, "orders").unwrap().stream().to_string(),
        StreamKeys::new(&testkit, "orders")
            .unwrap()
            .stream()
            .to_string()
    );
    assert_eq!(CacheOptions::builder(&ks).build().unwrap().keys(), &ks);

    // A bad prefix: InvalidInput naming it, from every constructor.
    let bad = "bad{tag}";
    let errors = [
        LockManager::new(&redis, bad).err(),
        Limiter::builder(&redis, bad)
            .limit(Limit::gcra(1, ttl))
            .fail_mode(FailMode::Open)
            .build()
            .err(),
        LoginThrottle::builder(&redis, bad)
            .fail_mode(FailMode::Closed)
            .build()
            .err(),
        StreamKeys::new(bad, "orders").err(),
        TtlMap::<String>::new(&redis, bad, ttl).err(),
        CacheOptions::builder(bad).build().err(),
        RevocationOptions::builder(FailMode::Closed)
            .prefix(bad)
            .build()
            .err(),
    ];
    for (i, err) in errors.into_iter().enumerate() {
        let err = err.unwrap_or_else(|| panic!("constructor {i} accepted {bad:?}"));
        assert_eq!(err.kind(), ErrorKind::InvalidInput, "{i}: {err}");
        assert!(err.to_string().contains(bad), "{i}: {err}");
    }
    cache.close().await;
    revocations.close().await;
    redis.shutdown().await.unwrap();
}

/// `Error`, `ErrorKind`, `Result`, `FailMode`, `KeySpace` and `IntoKeySpace`
/// are reachable the same way from every crate, and are the core's types.
#[test]
fn every_crate_exports_the_shared_core_types() {
    fn same<T>(_: T, _: T) {}
    macro_rules! check {
        ($($krate:ident),*) => {$(
            same(fredkit::$krate::FailMode::Open, fredkit::core::FailMode::Open);
            same(fredkit::$krate::ErrorKind::Timeout, fredkit::core::ErrorKind::Timeout);
            let r: fredkit::$krate::Result<fredkit::$krate::KeySpace> =
                fredkit::$krate::IntoKeySpace::into_key_space("app:x");
            let e: fredkit::$krate::Error = fredkit::core::Error::timeout("t");
            same(r.unwrap(), fredkit::core::KeySpace::new("app:x").unwrap());
            same(e.kind(), fredkit::core::ErrorKind::Timeout);
        )*};
    }
    check!(
        conn,
        cache,
        lock,
        ratelimit,
        streams,
        revocation,
        pubsub,
        collections
    );
}
