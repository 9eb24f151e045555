//! Percentage rollouts: within ±1 % over 100 000 users, and sticky as the
//! percentage grows.

use std::collections::HashSet;
use std::time::Duration;

use fredkit_flags::{Context, Expect, FlagAdmin, FlagDef, Write};
use fredkit_testkit::{unique_prefix, Topology};
use rstest::rstest;

use crate::{conn, instance};

#[rstest]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rollout_is_within_one_percent_and_keeps_everyone_when_raised(
    #[values(Topology::Standalone, Topology::Cluster)] topology: Topology,
) {
    let prefix = unique_prefix("flags_rollout");
    let a = conn(topology).await;
    let admin = FlagAdmin::new(&a, prefix.as_str()).unwrap();
    let b = instance(topology, &prefix).await;
    let ids: Vec<String> = (0..100_000u32).map(|i| format!("user-{i}")).collect();
    let w = admin
        .set("new-search", &FlagDef::on().percent(20.0), &Write::by("t"))
        .await
        .unwrap();
    assert!(b.wait_for_version(w.version, Duration::from_secs(10)).await);
    let at20: HashSet<&str> = ids
        .iter()
        .map(String::as_str)
        .filter(|id| b.is_enabled("new-search", &Context::user(id)))
        .collect();
    assert!(
        (19_000..=21_000).contains(&at20.len()),
        "20 % gave {} of 100000",
        at20.len()
    );

    let w = admin
        .set(
            "new-search",
            &FlagDef::on().percent(30.0),
            &Write::by("t").expect(Expect::Rev(w.rev)),
        )
        .await
        .unwrap();
    assert!(b.wait_for_version(w.version, Duration::from_secs(10)).await);
    let at30: HashSet<&str> = ids
        .iter()
        .map(String::as_str)
        .filter(|id| b.is_enabled("new-search", &Context::user(id)))
        .collect();
    assert!(
        (29_000..=31_000).contains(&at30.len()),
        "30 % gave {} of 100000",
        at30.len()
    );
    let dropped = at20.difference(&at30).count();
    assert_eq!(
        dropped, 0,
        "{dropped} users who were in at 20 % are out at 30 %"
    );
    // Another flag at 20 % picks other users (the flag name seeds the hash).
    let w = admin
        .set("other", &FlagDef::on().percent(20.0), &Write::by("t"))
        .await
        .unwrap();
    assert!(b.wait_for_version(w.version, Duration::from_secs(10)).await);
    let both = at20
        .iter()
        .filter(|id| b.is_enabled("other", &Context::user(id)))
        .count();
    assert!((3_000..=5_000).contains(&both), "overlap {both}");
    // 0 % and anonymous: nobody.
    assert!(!b.is_enabled("new-search", &Context::anonymous()));
}
