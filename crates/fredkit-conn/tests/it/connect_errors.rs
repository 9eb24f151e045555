//! A wrong `REDIS_URL` is reported as what it is: each connection error names
//! the URL (password redacted) and the cause the operating system or the
//! server gave — the host name does not resolve (DNS), nothing listens on the
//! port (connection refused), the server rejected the credentials — and what
//! to check. Through `wait_connected`, `last_connection_error`, and
//! `diagnose` of a command that timed out waiting for the connection.
//! (Rejected credentials in depth: the `auth` tests.)
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use fred::interfaces::KeysInterface;
use fredkit_conn::{Redis, RedisConfig};
use fredkit_core::ErrorKind;
use fredkit_testkit::{RedisServer, ServerOptions};
use std::time::Duration;

const PASSWORD: &str = "s3cret-in-url";
/// Only a hang reaches it.
const NO_HANG: Duration = Duration::from_secs(30);

fn assert_no_password(text: &str) {
    assert!(!text.contains(PASSWORD), "password leaked into: {text}");
}

/// `wait_connected`, `last_connection_error` and a diagnosed GET of a handle
/// on `url`, lazily connected.
async fn errors_of(
    url: &str,
) -> (
    fredkit_core::Error,
    fredkit_core::Error,
    fredkit_core::Error,
) {
    let config = RedisConfig::builder()
        .url(url)
        .connect_timeout(Duration::from_millis(1500))
        .build()
        .unwrap();
    let redis = Redis::connect(config).await.unwrap();
    let waited = tokio::time::timeout(NO_HANG, redis.wait_connected())
        .await
        .expect("wait_connected hung")
        .unwrap_err();
    let get = tokio::time::timeout(NO_HANG, redis.client().get::<Option<String>, _>("k"))
        .await
        .expect("GET hung")
        .unwrap_err();
    let diagnosed = redis.diagnose(get);
    let last = redis
        .last_connection_error()
        .expect("no last connection error");
    (waited, last, diagnosed)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unresolvable_host_is_reported_as_a_dns_failure_naming_the_host() {
    // `.invalid` never resolves (RFC 2606).
    let url = format!("redis://:{PASSWORD}@no-such-host.invalid:6390");
    let (waited, last, diagnosed) = errors_of(&url).await;

    assert_eq!(last.kind(), ErrorKind::Connection, "{last}");
    for e in [&waited, &last, &diagnosed] {
        let text = e.to_string();
        assert!(
            text.contains("cannot resolve the host name 'no-such-host.invalid'"),
            "{text}"
        );
        assert!(
            text.contains("redis://:***@no-such-host.invalid:6390"),
            "{text}"
        );
        assert!(text.contains("check the host name"), "{text}");
        assert_no_password(&text);
        assert_no_password(&format!("{e:?}"));
    }
    // Still timeouts where documented: the handle keeps trying.
    assert_eq!(waited.kind(), ErrorKind::Timeout, "{waited}");
    assert_eq!(diagnosed.kind(), ErrorKind::Timeout, "{diagnosed}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closed_port_is_reported_as_refused_naming_the_url_and_what_to_check() {
    let mut server = RedisServer::start().unwrap();
    let port = server.port();
    server.kill().unwrap();
    let url = format!("redis://:{PASSWORD}@127.0.0.1:{port}");
    let (waited, last, diagnosed) = errors_of(&url).await;

    assert_eq!(last.kind(), ErrorKind::Connection, "{last}");
    for e in [&waited, &last, &diagnosed] {
        let text = e.to_string();
        assert!(
            text.contains(&format!(
                "connection refused by redis://:***@127.0.0.1:{port}"
            )),
            "{text}"
        );
        assert!(
            text.contains("check that the server is running and listens on that host and port"),
            "{text}"
        );
        assert_no_password(&text);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_password_in_the_url_is_a_config_error_naming_the_url() {
    let server =
        RedisServer::start_with(ServerOptions::default().password("the-right-one")).unwrap();
    let url = format!("redis://:{PASSWORD}@127.0.0.1:{}", server.port());
    let (waited, last, diagnosed) = errors_of(&url).await;
    for e in [&waited, &last, &diagnosed] {
        assert_eq!(e.kind(), ErrorKind::Config, "{e}");
        let text = e.to_string();
        assert!(
            text.contains(&format!(
                "the server rejected the credentials for user 'default' at redis://:***@127.0.0.1:{}",
                server.port()
            )),
            "{text}"
        );
        assert!(text.contains("WRONGPASS"), "{text}");
        assert!(text.contains("check the user name and password"), "{text}");
        assert_no_password(&text);
    }
}
