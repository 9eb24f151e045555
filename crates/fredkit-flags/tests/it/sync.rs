//! Changes reach every instance; evaluations make no round trip; expiry by
//! the server's clock; unknown flags and malformed records.

use std::time::Duration;

use fred::interfaces::HashesInterface;
use fredkit_flags::{Context, FlagAdmin, FlagDef, Flags, FlagsOptions, Reason, Write};
use fredkit_testkit::{unique_prefix, Topology};
use rstest::rstest;
use serde_json::json;

use crate::{conn, eventually, instance, server_ms};

/// A change written through instance A's connection is applied by B and C
/// (each on its own connection) from the change message — not by a reload
/// — and B's 10 000 evaluations make no round trip.
#[rstest]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_through_a_is_applied_by_b_and_c_without_round_trips(
    #[values(Topology::Standalone, Topology::Cluster)] topology: Topology,
) {
    let prefix = unique_prefix("flags_abc");
    let a = conn(topology).await;
    let admin = FlagAdmin::new(&a, prefix.as_str()).unwrap();
    let _a_flags = Flags::new(&a, prefix.as_str()).await.unwrap();
    admin
        .set("checkout", &FlagDef::off(), &Write::by("test"))
        .await
        .unwrap();
    let b = instance(topology, &prefix).await;
    let c = instance(topology, &prefix).await;
    let ctx = Context::user("42");
    assert!(!b.is_enabled("checkout", &ctx));
    assert_eq!(b.evaluate("checkout", &ctx).reason, Reason::Disabled);
    let (b0, c0) = (b.metrics(), c.metrics());

    let w = admin
        .set(
            "checkout",
            &FlagDef::on().value(json!("blue")),
            &Write::by("test"),
        )
        .await
        .unwrap();
    let took_b = eventually("B applies the change", Duration::from_secs(10), || {
        b.is_enabled("checkout", &ctx)
    })
    .await;
    let took_c = eventually("C applies the change", Duration::from_secs(10), || {
        c.is_enabled("checkout", &ctx)
    })
    .await;
    eprintln!("applied after: B {took_b:?}, C {took_c:?} (polled from the write's reply)");
    assert_eq!(b.version(), w.version);
    assert_eq!(c.version(), w.version);
    assert_eq!(b.variant("checkout", &ctx).as_str(), Some("blue"));
    // Applied from the message: one change, no reload, no round trip.
    let (b1, c1) = (b.metrics(), c.metrics());
    assert_eq!(b1.changes_applied, b0.changes_applied + 1, "{b1:?}");
    assert_eq!(c1.changes_applied, c0.changes_applied + 1, "{c1:?}");
    assert_eq!((b1.reloads, c1.reloads), (b0.reloads, c0.reloads));
    assert_eq!(
        b1.round_trips, b0.round_trips,
        "B made a round trip: {b1:?}"
    );

    for i in 0..10_000u32 {
        let id = i.to_string();
        assert!(b.is_enabled("checkout", &Context::user(&id)));
        let _ = b.variant("checkout", &Context::user(&id));
    }
    assert_eq!(
        b.metrics().round_trips,
        b0.round_trips,
        "evaluations made round trips"
    );

    // A delete reverts everyone to the default from code (false).
    let w = admin.delete("checkout", &Write::by("test")).await.unwrap();
    eventually("B applies the delete", Duration::from_secs(10), || {
        b.version() == w.version
    })
    .await;
    assert_eq!(b.evaluate("checkout", &ctx).reason, Reason::Unknown);
    assert!(!b.is_enabled("checkout", &ctx));
}

/// A flag set to expire in 1.5 s is on everywhere, then off (the default
/// from code) on B and C once the server's clock passed its expiry. Its
/// expiry was computed by the script from the server's clock.
#[rstest]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_flag_reverts_on_every_instance_by_the_server_clock(
    #[values(Topology::Standalone, Topology::Cluster)] topology: Topology,
) {
    let prefix = unique_prefix("flags_expiry");
    let a = conn(topology).await;
    let admin = FlagAdmin::new(&a, prefix.as_str()).unwrap();
    let b = instance(topology, &prefix).await;
    let c = instance(topology, &prefix).await;
    let before = server_ms(&a).await;
    let w = admin
        .set(
            "promo",
            &FlagDef::on(),
            &Write::by("test").expire_in(Duration::from_millis(1500)),
        )
        .await
        .unwrap();
    let stored = admin.get("promo").await.unwrap().unwrap();
    let expires_at = stored.expires_at.unwrap();
    assert_eq!(expires_at, stored.updated_at + 1500);
    assert!(stored.updated_at >= before);
    for f in [&b, &c] {
        assert!(f.wait_for_version(w.version, Duration::from_secs(10)).await);
    }
    // Still before the expiry by the server's clock: on.
    let now = server_ms(&a).await;
    if now + 200 < expires_at {
        assert!(b.is_enabled("promo", &Context::anonymous()));
        assert!(c.is_enabled("promo", &Context::anonymous()));
    }
    // Once the server's clock is past it, both answer the default, and
    // say why. (Their estimate of the server's clock may be a few ms off:
    // poll, with a deadline far above that.)
    while server_ms(&a).await < expires_at {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for f in [&b, &c] {
        eventually("the flag reverts", Duration::from_secs(5), || {
            !f.is_enabled("promo", &Context::anonymous())
        })
        .await;
        assert_eq!(
            f.evaluate("promo", &Context::user("1")).reason,
            Reason::Expired
        );
        let skew = f.server_now_ms().abs_diff(server_ms(&a).await);
        assert!(skew < 1000, "clock estimate off by {skew} ms");
    }
    // The stored record is still there (it is configuration); the CLI shows
    // it as expired. A new write with an expiry of "never" revives it.
    let w = admin
        .set(
            "promo",
            &FlagDef::on(),
            &Write::by("test").expiry(fredkit_flags::Expiry::Never),
        )
        .await
        .unwrap();
    assert!(b.wait_for_version(w.version, Duration::from_secs(10)).await);
    assert!(b.is_enabled("promo", &Context::anonymous()));
}

/// An unknown flag answers its default from code (counted, never an
/// error); a malformed record is skipped on reload and the previous value
/// of the flag is kept.
#[rstest]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_flags_answer_defaults_and_malformed_records_keep_the_previous_value(
    #[values(Topology::Standalone, Topology::Cluster)] topology: Topology,
) {
    let prefix = unique_prefix("flags_bad");
    let a = conn(topology).await;
    let admin = FlagAdmin::new(&a, prefix.as_str()).unwrap();
    let b = Flags::with_options(
        &conn(topology).await,
        prefix.as_str(),
        FlagsOptions::default()
            .sync_interval(Duration::from_secs(3600))
            .default_enabled("dark-mode", true)
            .default_value("theme", "light"),
    )
    .await
    .unwrap();
    let ctx = Context::user("7");
    assert!(b.is_enabled("dark-mode", &ctx));
    assert!(!b.is_enabled("nothing", &ctx));
    assert_eq!(b.variant("theme", &ctx).as_str(), Some("light"));
    assert_eq!(b.variant("theme", &ctx).reason(), Reason::Unknown);
    assert_eq!(b.metrics().unknown_flags, 4);

    let w = admin
        .set(
            "theme",
            &FlagDef::on().value(json!("dark")),
            &Write::by("t"),
        )
        .await
        .unwrap();
    assert!(b.wait_for_version(w.version, Duration::from_secs(10)).await);
    assert_eq!(b.variant("theme", &ctx).as_str(), Some("dark"));
    // Off for this user: the default from code.
    let w = admin
        .set(
            "theme",
            &FlagDef::on().value(json!("dark")).deny_user("7"),
            &Write::by("t"),
        )
        .await
        .unwrap();
    assert!(b.wait_for_version(w.version, Duration::from_secs(10)).await);
    let v = b.variant("theme", &ctx);
    assert_eq!((v.as_str(), v.reason()), (Some("light"), Reason::Denied));
    let w = admin
        .set(
            "theme",
            &FlagDef::on().value(json!("dark")),
            &Write::by("t"),
        )
        .await
        .unwrap();
    assert!(b.wait_for_version(w.version, Duration::from_secs(10)).await);

    // Garbage written by hand (redis-cli) under the flag and a new one.
    let keys = admin.keys().clone();
    let hash = keys.tagged(keys.prefix(), ["flags"]).unwrap();
    let _: i64 = a.client().hset(&hash, ("theme", "{garbage")).await.unwrap();
    let _: i64 = a
        .client()
        .hset(&hash, ("other", r#"{"rev":1,"wid":"x","expires_at":null,"updated_at":1,"by":"x","def":{"percent":250}}"#))
        .await
        .unwrap();
    b.reload().await.unwrap();
    assert_eq!(b.metrics().malformed_records, 2);
    assert_eq!(
        b.variant("theme", &ctx).as_str(),
        Some("dark"),
        "previous value lost"
    );
    assert!(!b.is_enabled("other", &ctx));
    assert!(b.get("other").is_none());
    // The admin API reports the garbage as a typed error naming the flag.
    let e = admin.get("theme").await.unwrap_err();
    assert!(e.to_string().contains("theme"), "{e}");
}

/// Weighted variants: sticky per user, split by weight.
#[rstest]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weighted_variants_are_sticky_and_split_by_weight(
    #[values(Topology::Standalone, Topology::Cluster)] topology: Topology,
) {
    let prefix = unique_prefix("flags_variants");
    let a = conn(topology).await;
    let admin = FlagAdmin::new(&a, prefix.as_str()).unwrap();
    let b = instance(topology, &prefix).await;
    let def = FlagDef::on()
        .variant("control", 1, json!({"price": 10}))
        .variant("test", 3, json!({"price": 12}));
    let w = admin.set("pricing", &def, &Write::by("t")).await.unwrap();
    assert!(b.wait_for_version(w.version, Duration::from_secs(10)).await);
    let mut test = 0u32;
    for i in 0..10_000u32 {
        let id = format!("u{i}");
        let v = b.variant("pricing", &Context::user(&id));
        let again = b.variant("pricing", &Context::user(&id));
        assert_eq!(v.name(), again.name());
        if v.name() == Some("test") {
            assert_eq!(v.json().unwrap()["price"], 12);
            test += 1;
        }
    }
    assert!(
        (7_200..=7_800).contains(&test),
        "test variant for {test} of 10000 users"
    );
}

/// With the `metrics` feature: the counters and the version gauge through
/// the `metrics` facade (handles registered when the instance and the admin
/// are built).
#[cfg(feature = "metrics")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_changes_reloads_unknown_flags_and_admin_writes() {
    use fredkit_flags::{AdminError, Expect};
    use metrics_util::debugging::{DebugValue, DebuggingRecorder};
    let prefix = unique_prefix("flags_metrics");
    let redis = conn(Topology::Standalone).await;
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let (flags, admin) = tokio::task::block_in_place(|| {
        metrics::with_local_recorder(&recorder, || {
            let handle = tokio::runtime::Handle::current();
            let flags = handle
                .block_on(Flags::with_options(
                    &redis,
                    prefix.as_str(),
                    FlagsOptions::default().sync_interval(Duration::from_secs(3600)),
                ))
                .unwrap();
            (flags, FlagAdmin::new(&redis, prefix.as_str()).unwrap())
        })
    });
    assert!(!flags.is_enabled("missing", &Context::anonymous()));
    assert!(!flags.is_enabled("missing", &Context::anonymous()));
    let w = admin
        .set("f", &FlagDef::on(), &Write::by("t"))
        .await
        .unwrap();
    assert!(matches!(
        admin
            .set("f", &FlagDef::on().percent(200.0), &Write::by("t"))
            .await,
        Err(AdminError::Invalid { .. })
    ));
    assert!(admin
        .set("f", &FlagDef::on(), &Write::by("t").expect(Expect::Absent))
        .await
        .unwrap_err()
        .is_conflict());
    assert!(
        flags
            .wait_for_version(w.version, Duration::from_secs(10))
            .await
    );
    flags.reload().await.unwrap();

    let mut values = std::collections::HashMap::new();
    for (key, _, _, value) in snapshotter.snapshot().into_vec() {
        let name = key.key().name().to_string();
        if !name.starts_with("fredkit_flags_") {
            continue; // fredkit-pubsub's, of the subscriber
        }
        assert!(key
            .key()
            .labels()
            .any(|l| l.key() == "prefix" && prefix.starts_with(l.value())));
        let outcome = key
            .key()
            .labels()
            .find(|l| l.key() == "outcome")
            .map(|l| format!("/{}", l.value()))
            .unwrap_or_default();
        let v = match value {
            DebugValue::Counter(n) => n as f64,
            DebugValue::Gauge(g) => g.into_inner(),
            DebugValue::Histogram(h) => h.len() as f64,
        };
        values.insert(format!("{name}{outcome}"), v);
    }
    let get = |k: &str| values.get(k).copied().unwrap_or(-1.0);
    assert_eq!(get("fredkit_flags_unknown_flag_total"), 2.0, "{values:?}");
    assert_eq!(
        get("fredkit_flags_changes_applied_total"),
        1.0,
        "{values:?}"
    );
    assert_eq!(get("fredkit_flags_reloads_total/ok"), 2.0, "{values:?}");
    assert_eq!(get("fredkit_flags_reloads_total/error"), 0.0, "{values:?}");
    assert_eq!(
        get("fredkit_flags_admin_writes_total/ok"),
        1.0,
        "{values:?}"
    );
    assert_eq!(
        get("fredkit_flags_admin_writes_total/invalid"),
        1.0,
        "{values:?}"
    );
    assert_eq!(
        get("fredkit_flags_admin_writes_total/conflict"),
        1.0,
        "{values:?}"
    );
    assert_eq!(
        get("fredkit_flags_snapshot_version"),
        w.version as f64,
        "{values:?}"
    );
    assert_eq!(get("fredkit_flags_outages_total"), 0.0, "{values:?}");
}

/// The unknown-flag warning is logged once per flag and instance, however
/// often the flag is evaluated (through `is_enabled` and `variant`), while
/// every evaluation is counted; a known flag logs nothing.
#[rstest]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_flag_warning_is_logged_once_per_flag(
    #[values(Topology::Standalone, Topology::Cluster)] topology: Topology,
) {
    let logs = fredkit_testkit::capture::Logs::install();
    let prefix = unique_prefix("flags_warn");
    let w = FlagAdmin::new(&conn(topology).await, prefix.as_str())
        .unwrap()
        .set("known", &FlagDef::on(), &Write::by("t"))
        .await
        .unwrap();
    let b = instance(topology, &prefix).await;
    assert!(b.wait_for_version(w.version, Duration::from_secs(10)).await);
    let ctx = Context::user("7");
    for _ in 0..100 {
        assert!(!b.is_enabled("unknown-a", &ctx));
        assert_eq!(b.variant("unknown-a", &ctx).reason(), Reason::Unknown);
        assert!(!b.is_enabled("unknown-b", &ctx));
        assert!(b.is_enabled("known", &ctx));
    }
    assert_eq!(b.metrics().unknown_flags, 300);
    let warned = logs.lines_containing("unknown flag evaluated");
    assert_eq!(warned.len(), 2, "{warned:#?}");
    for flag in ["unknown-a", "unknown-b"] {
        let lines: Vec<_> = warned.iter().filter(|l| l.contains(flag)).collect();
        assert_eq!(lines.len(), 1, "{flag}: {warned:#?}");
        assert!(lines[0].contains(" WARN "), "{}", lines[0]);
    }
    assert!(
        logs.lines_containing("\"known\"").is_empty(),
        "{}",
        logs.text()
    );
}
