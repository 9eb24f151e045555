//! The OpenFeature provider resolves from the snapshot.

use std::time::Duration;

use fredkit_flags::openfeature::FredkitProvider;
use fredkit_flags::{FlagAdmin, FlagDef, Flags, FlagsOptions, Write};
use fredkit_testkit::{unique_prefix, Topology};
use open_feature::provider::FeatureProvider;
use open_feature::{EvaluationContext, EvaluationErrorCode, EvaluationReason};
use rstest::rstest;
use serde_json::json;

use crate::conn;

#[rstest]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openfeature_provider_resolves_from_the_snapshot(
    #[values(Topology::Standalone, Topology::Cluster)] topology: Topology,
) {
    let prefix = unique_prefix("flags_of");
    let redis = conn(topology).await;
    let admin = FlagAdmin::new(&redis, prefix.as_str()).unwrap();
    let flags = Flags::with_options(
        &redis,
        prefix.as_str(),
        FlagsOptions::default().default_enabled("coded", true),
    )
    .await
    .unwrap();
    admin
        .set(
            "beta",
            &FlagDef::on()
                .percent(0.0)
                .allow_group("staff")
                .value(json!("v2")),
            &Write::by("t"),
        )
        .await
        .unwrap();
    let w = admin
        .set(
            "limits",
            &FlagDef::on().value(json!({"rps": 50, "burst": 2.5})),
            &Write::by("t"),
        )
        .await
        .unwrap();
    assert!(
        flags
            .wait_for_version(w.version, Duration::from_secs(10))
            .await
    );
    let p = FredkitProvider::new(flags);
    let staff = EvaluationContext::default()
        .with_targeting_key("7")
        .with_custom_field("groups", "qa, staff");
    let nobody = EvaluationContext::default().with_targeting_key("8");

    let r = p.resolve_bool_value("beta", &staff).await.unwrap();
    assert!(r.value);
    assert_eq!(r.reason, Some(EvaluationReason::TargetingMatch));
    let r = p.resolve_bool_value("beta", &nobody).await.unwrap();
    assert!(!r.value);
    assert_eq!(r.reason, Some(EvaluationReason::Split));
    assert_eq!(
        p.resolve_string_value("beta", &staff).await.unwrap().value,
        "v2"
    );
    // Off for this user and no default from code: the call site decides.
    let e = p.resolve_string_value("beta", &nobody).await.unwrap_err();
    assert_eq!(e.code, EvaluationErrorCode::FlagNotFound);
    let s = p
        .resolve_struct_value("limits", &nobody)
        .await
        .unwrap()
        .value;
    assert_eq!(s.fields.len(), 2);
    let e = p.resolve_int_value("limits", &nobody).await.unwrap_err();
    assert_eq!(e.code, EvaluationErrorCode::TypeMismatch);
    let e = p.resolve_bool_value("missing", &nobody).await.unwrap_err();
    assert_eq!(e.code, EvaluationErrorCode::FlagNotFound);
    // A default from code for an unknown flag answers.
    let r = p.resolve_bool_value("coded", &nobody).await.unwrap();
    assert!(r.value);
    assert_eq!(r.reason, Some(EvaluationReason::Default));
}
