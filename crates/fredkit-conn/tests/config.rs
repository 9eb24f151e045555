//! RedisConfig: URLs, builder, serde, redaction. No server needed.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use fredkit_conn::{Node, RedisConfig, Topology};
use fredkit_core::ErrorKind;
use rstest::rstest;
use std::time::Duration;

fn node(h: &str, p: u16) -> Node {
    Node {
        host: h.into(),
        port: p,
    }
}

#[rstest]
#[case("redis://localhost", Topology::Standalone(node("localhost", 6379)))]
#[case(
    "redis://10.1.2.3:6380/2",
    Topology::Standalone(node("10.1.2.3", 6380))
)]
#[case("redis://[::1]:7000", Topology::Standalone(node("::1", 7000)))]
#[case(
    "redis-cluster://a:7000,b:7001",
    Topology::Cluster(vec![node("a", 7000), node("b", 7001)])
)]
#[case(
    "redis-cluster://a:7000?node=b:7001&node=c:7002",
    Topology::Cluster(vec![node("a", 7000), node("b", 7001), node("c", 7002)])
)]
fn urls_give_the_topology(#[case] url: &str, #[case] want: Topology) {
    let c = RedisConfig::from_url(url).unwrap();
    assert_eq!(c.topology(), &want);
}

#[test]
fn sentinel_url_in_fred_syntax() {
    let c = RedisConfig::from_url(
        "redis-sentinel://:pw@s1:26379/3?node=s2:26380&sentinelServiceName=mymaster&sentinelPassword=spw",
    )
    .unwrap();
    match c.topology() {
        Topology::Sentinel {
            sentinels,
            service_name,
            sentinel_password,
            ..
        } => {
            assert_eq!(sentinels, &vec![node("s1", 26379), node("s2", 26380)]);
            assert_eq!(service_name, "mymaster");
            assert_eq!(sentinel_password.as_ref().unwrap().expose(), "spw");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(c.database(), Some(3));
    assert!(c.has_password());
}

#[test]
fn defaults_never_hang() {
    let c = RedisConfig::from_url("redis://localhost").unwrap();
    assert_eq!(c.connect_timeout(), Duration::from_secs(5));
    assert_eq!(c.command_timeout(), Duration::from_secs(1));
    assert_eq!(c.reconnect().max_attempts, 0, "reconnect forever");
    assert!(c.reconnect().max_delay >= c.reconnect().initial_delay);
    assert!(c.lazy());
    assert_eq!(c.pool_size(), 1);
}

#[test]
fn url_options_apply() {
    let c = RedisConfig::from_url(
        "redis://localhost?connect_timeout=250ms&command_timeout=2s&pool_size=4&lazy=false",
    )
    .unwrap();
    assert_eq!(c.connect_timeout(), Duration::from_millis(250));
    assert_eq!(c.command_timeout(), Duration::from_secs(2));
    assert_eq!(c.pool_size(), 4);
    assert!(!c.lazy());
}

#[rstest]
#[case("localhost:6379", "missing '://'")]
#[case("http://localhost", "unknown scheme 'http'")]
#[case("redis://localhost:notaport", "port 'notaport'")]
#[case("redis://localhost:0", "port '0'")]
#[case("redis://localhost:70000", "port '70000'")]
#[case("redis://localhost/abc", "database 'abc'")]
#[case("redis://localhost/300", "database '300'")]
#[case("redis://a:1,b:2", "several hosts")]
#[case("redis-cluster://a:1,,b:2", "a host is empty")]
#[case("redis-cluster://a:1/2", "cluster has no databases")]
#[case("redis-sentinel://s1:26379", "sentinelServiceName")]
#[case(
    "redis://localhost?comand_timeout=1s",
    "unknown option 'comand_timeout'"
)]
#[case("redis://localhost?command_timeout=fast", "option 'command_timeout'")]
#[case(
    "redis://localhost?command_timeout=0ms",
    "command_timeout must be greater than zero"
)]
#[case("redis://localhost?pool_size=0", "pool_size '0'")]
#[case("redis://[::1:6379", "opens '['")]
#[case("redis://:p%zz@localhost", "broken %-escape")]
#[case("redis://localhost#frag", "fragment")]
#[case("redis://::1", "in brackets")]
#[case("redis://:p%+a@localhost", "broken %-escape")]
fn bad_urls_name_the_bad_part(#[case] url: &str, #[case] names: &str) {
    let err = RedisConfig::from_url(url).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Config, "{err}");
    assert!(
        err.to_string().contains(names),
        "error for {url:?} should mention {names:?}: {err}"
    );
}

#[cfg(not(feature = "tls"))]
#[test]
fn rediss_without_tls_feature_says_which_feature() {
    let err = RedisConfig::from_url("rediss://localhost").unwrap_err();
    assert!(err.to_string().contains("'tls' feature"), "{err}");
}

#[cfg(feature = "tls")]
#[test]
fn rediss_with_tls_feature_parses() {
    let c = RedisConfig::from_url("rediss://localhost:6380").unwrap();
    assert!(c.tls());
}

const PASSWORDS: &[&str] = &["hunter2-secret", "sentinel-s3cret"];

fn assert_no_secret(text: &str) {
    for p in PASSWORDS
        .iter()
        .chain(&["hunter2/secret", "hunter2?secret", "secret@h"])
    {
        assert!(!text.contains(p), "secret {p:?} leaked into: {text}");
    }
}

#[test]
fn passwords_never_appear_in_debug_or_display() {
    let c = RedisConfig::from_url("redis://user:hunter2-secret@localhost:6379/1").unwrap();
    assert_no_secret(&format!("{c:?}"));
    assert_no_secret(&format!("{c:#?}"));
    assert_no_secret(&c.to_string());
    assert!(c.to_string().contains("user:***@"), "{c}");

    let s = RedisConfig::from_url(
        "redis-sentinel://:hunter2-secret@s1?sentinelServiceName=m&sentinelPassword=sentinel-s3cret",
    )
    .unwrap();
    assert_no_secret(&format!("{s:?}"));
    assert_no_secret(&s.to_string());

    let b = RedisConfig::builder()
        .standalone("h", 1)
        .password("hunter2-secret")
        .build()
        .unwrap();
    assert_no_secret(&format!("{b:?}"));
    assert_no_secret(&format!(
        "{:?}",
        RedisConfig::builder().password("hunter2-secret")
    ));
}

#[rstest]
#[case("redis://:hunter2-secret@localhost:notaport")]
#[case("redis://user:hunter2-secret@localhost?bogus=1")]
#[case("redis://hunter2-secret@localhost/xyz")]
#[case("redis-cluster://u:hunter2-secret@a:1/2")]
#[case("redis://:hunter2/secret@h")]
#[case("redis://:hunter2?secret@h")]
#[case("redis://:hunter2-secret@h:1?x=1/2")]
#[case("redis:/:hunter2-secret@h")]
#[case("redis-sentinel://s1?sentinelPassword=hunter2-secret&sentinelServiceName=")]
#[case("redis-cluster://a:1?sentinelPassword=hunter2-secret")]
#[case("redis-sentinel://s1?sentinelPassword=hunter2-secret&sentinelServiceName=m&bad=%zz")]
fn passwords_never_appear_in_url_errors(#[case] url: &str) {
    let err = RedisConfig::from_url(url).unwrap_err();
    assert_no_secret(&err.to_string());
    assert_no_secret(&format!("{err:?}"));
}

#[test]
fn password_only_userinfo_is_a_password() {
    let c = RedisConfig::from_url("redis://hunter2-secret@localhost").unwrap();
    assert!(c.has_password());
    assert_eq!(c.username(), None);
}

#[test]
fn builder_settings_win_over_the_url_whatever_the_order() {
    let c = RedisConfig::builder()
        .command_timeout(Duration::from_millis(300))
        .url("redis://localhost?command_timeout=2s&pool_size=2")
        .pool_size(1)
        .build()
        .unwrap();
    assert_eq!(c.command_timeout(), Duration::from_millis(300));
    assert_eq!(c.pool_size(), 1);
}

#[test]
fn builder_rejects_invalid_combinations() {
    let e = RedisConfig::builder()
        .cluster([("a", 1)])
        .database(2)
        .build()
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Config);
    let e = RedisConfig::builder()
        .command_timeout(Duration::ZERO)
        .build()
        .unwrap_err();
    assert!(e.to_string().contains("command_timeout"), "{e}");
    let e = RedisConfig::builder().pool_size(0).build().unwrap_err();
    assert!(e.to_string().contains("pool_size"), "{e}");
}

#[test]
fn config_file_deserialises_with_overrides() {
    let c: RedisConfig = serde_json::from_str(
        r#"{"url":"redis-cluster://a:7000,b:7001","password":"hunter2-secret",
            "command_timeout":"250ms","connect_timeout":2000,"reconnect_max_attempts":10,
            "pool_size":2}"#,
    )
    .unwrap();
    assert_eq!(c.command_timeout(), Duration::from_millis(250));
    assert_eq!(c.connect_timeout(), Duration::from_secs(2));
    assert_eq!(c.reconnect().max_attempts, 10);
    assert_eq!(c.pool_size(), 2);
    assert!(c.has_password());
    assert_no_secret(&format!("{c:?}"));
}

#[rstest]
#[case(
    r#"{"url":"redis://localhost","comand_timeout":"1s"}"#,
    "comand_timeout"
)]
#[case(r#"{"url":"redis://localhost:x"}"#, "port 'x'")]
#[case(
    r#"{"url":"redis://localhost","command_timeout":"soon"}"#,
    "command_timeout"
)]
#[case(r#"{"command_timeout":"1s"}"#, "url")]
fn bad_config_files_are_errors_naming_the_field(#[case] json: &str, #[case] names: &str) {
    let err = serde_json::from_str::<RedisConfig>(json).unwrap_err();
    assert!(err.to_string().contains(names), "{err}");
}

#[test]
fn config_file_errors_do_not_leak_the_password() {
    let err =
        serde_json::from_str::<RedisConfig>(r#"{"url":"redis://:hunter2-secret@localhost:x"}"#)
            .unwrap_err();
    assert_no_secret(&err.to_string());
}

#[test]
fn from_env_var_reads_the_variable_and_explains_when_unset() {
    // A variable name no other test uses: tests in one binary share the environment.
    let e = RedisConfig::from_env_var("FREDKIT_TEST_UNSET_URL_VAR").unwrap_err();
    assert!(
        e.to_string()
            .contains("FREDKIT_TEST_UNSET_URL_VAR is not set"),
        "{e}"
    );
}
