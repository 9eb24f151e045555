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

// ------------------------------------------------------------ duration bounds

/// Every duration a builder takes, by the name its errors use.
#[derive(Clone, Copy, Debug)]
enum Field {
    ConnectTimeout,
    CommandTimeout,
    InitialDelay,
    MaxDelay,
    Jitter,
}

impl Field {
    fn name(self) -> &'static str {
        match self {
            Field::ConnectTimeout => "connect_timeout",
            Field::CommandTimeout => "command_timeout",
            Field::InitialDelay => "reconnect initial_delay",
            Field::MaxDelay => "reconnect max_delay",
            Field::Jitter => "reconnect jitter",
        }
    }

    /// The largest value `build` accepts.
    fn max(self) -> Duration {
        match self {
            Field::ConnectTimeout | Field::CommandTimeout => Duration::from_secs(24 * 3600),
            Field::InitialDelay | Field::Jitter => Duration::from_secs(60),
            Field::MaxDelay => Duration::from_secs(3600),
        }
    }

    /// The smallest value `build` accepts.
    fn min(self) -> Duration {
        match self {
            Field::Jitter => Duration::ZERO,
            _ => Duration::from_millis(1),
        }
    }

    /// A builder with this field set to `d` and everything else default
    /// (`max_delay` follows a larger `initial_delay`, so that the range of
    /// the field itself is what is checked).
    fn builder(self, d: Duration) -> fredkit_conn::RedisConfigBuilder {
        let b = RedisConfig::builder().standalone("localhost", 6379);
        let mut r = fredkit_conn::ReconnectConfig::default();
        match self {
            Field::ConnectTimeout => b.connect_timeout(d),
            Field::CommandTimeout => b.command_timeout(d),
            Field::InitialDelay => {
                r.initial_delay = d;
                r.max_delay = r.max_delay.max(d);
                b.reconnect(r)
            }
            Field::MaxDelay => {
                r.max_delay = d;
                r.initial_delay = r.initial_delay.min(d).max(Duration::from_millis(1));
                b.reconnect(r)
            }
            Field::Jitter => {
                r.jitter = d;
                b.reconnect(r)
            }
        }
    }
}

const FIELDS: [Field; 5] = [
    Field::ConnectTimeout,
    Field::CommandTimeout,
    Field::InitialDelay,
    Field::MaxDelay,
    Field::Jitter,
];

#[test]
fn out_of_range_durations_are_config_errors_naming_the_field_and_range() {
    for field in FIELDS {
        let mut bad = vec![
            Duration::MAX,
            field.max() + Duration::from_nanos(1),
            Duration::from_secs(u64::MAX / 2),
        ];
        if !field.min().is_zero() {
            bad.extend([Duration::ZERO, Duration::from_micros(999)]);
        }
        for d in bad {
            let e = field.builder(d).build().unwrap_err();
            assert_eq!(e.kind(), ErrorKind::Config, "{field:?} {d:?}: {e}");
            let text = e.to_string();
            assert!(text.contains(field.name()), "{field:?} {d:?}: {text}");
            // The range is named, except for the long-standing zero
            // command timeout message, which says why zero is refused.
            if !(matches!(field, Field::CommandTimeout) && d.is_zero()) {
                assert!(
                    text.contains(&format!("{:?}", field.max())),
                    "{field:?} {d:?} should name the range: {text}"
                );
            }
        }
    }
}

#[test]
fn in_range_durations_build() {
    for field in FIELDS {
        for d in [field.min(), field.max()] {
            let c = field
                .builder(d)
                .build()
                .unwrap_or_else(|e| panic!("{field:?} {d:?}: {e}"));
            let got = match field {
                Field::ConnectTimeout => c.connect_timeout(),
                Field::CommandTimeout => c.command_timeout(),
                Field::InitialDelay => c.reconnect().initial_delay,
                Field::MaxDelay => c.reconnect().max_delay,
                Field::Jitter => c.reconnect().jitter,
            };
            assert_eq!(got, d, "{field:?}");
        }
    }
}

#[rstest]
#[case("redis://localhost?command_timeout=100000h", "command_timeout")]
#[case("redis://localhost?connect_timeout=25h", "connect_timeout")]
#[case("redis://localhost?connect_timeout=0.5ms", "connect_timeout")]
fn url_durations_out_of_range_name_the_option(#[case] url: &str, #[case] field: &str) {
    let e = RedisConfig::from_url(url).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Config, "{e}");
    assert!(e.to_string().contains(field), "{e}");
    let e = RedisConfig::builder().url(url).build().unwrap_err();
    assert!(e.to_string().contains(field), "{e}");
}

#[rstest]
#[case(r#""command_timeout":18446744073709551615"#, "command_timeout")]
#[case(r#""connect_timeout":"25h""#, "connect_timeout")]
#[case(r#""reconnect_initial_delay":"2m""#, "reconnect initial_delay")]
#[case(r#""reconnect_max_delay":"2h""#, "reconnect max_delay")]
#[case(r#""reconnect_jitter":"61s""#, "reconnect jitter")]
#[case(r#""reconnect_initial_delay":0"#, "reconnect initial_delay")]
fn config_file_durations_out_of_range_name_the_field(
    #[case] field_json: &str,
    #[case] names: &str,
) {
    let json = format!(r#"{{"url":"redis://localhost",{field_json}}}"#);
    let e = serde_json::from_str::<RedisConfig>(&json).unwrap_err();
    assert!(e.to_string().contains(names), "{json}: {e}");
}

#[test]
fn unresponsive_after_saturates_instead_of_overflowing() {
    use fredkit_conn::liveness::unresponsive_after;
    assert_eq!(unresponsive_after(Duration::MAX), Duration::MAX);
    assert_eq!(
        unresponsive_after(Duration::from_secs(2)),
        Duration::from_secs(6)
    );
    assert_eq!(
        unresponsive_after(Duration::from_millis(1)),
        Duration::from_secs(3)
    );
}
