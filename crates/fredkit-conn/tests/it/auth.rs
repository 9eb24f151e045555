//! Credentials the server rejects, and servers that refuse connections, are
//! reported as what they are — not as "Redis did not answer in time": on
//! `wait_connected` (and `connect` with `lazy(false)`), through
//! `Redis::diagnose` for commands that timed out waiting for the
//! connection, through `Redis::last_connection_error`, and by `health()`.
//! Each message names the user and the URL with the password redacted,
//! never a password.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use fred::interfaces::KeysInterface;
use fredkit_conn::{Redis, RedisConfig};
use fredkit_core::ErrorKind;
use fredkit_testkit::{RedisServer, ServerOptions};
use std::time::Duration;

const PASSWORD: &str = "hunter2-secret";
const WRONG: &str = "wrong-pass-42";
const ALICE_PASSWORD: &str = "alice-s3cret";

/// Bounds a wait that must end long before it; only a hang reaches it.
const NO_HANG: Duration = Duration::from_secs(20);

fn protected_server() -> RedisServer {
    let server = RedisServer::start_with(ServerOptions::default().password(PASSWORD)).unwrap();
    server
        .command(&[
            "ACL",
            "SETUSER",
            "alice",
            "on",
            &format!(">{ALICE_PASSWORD}"),
            "~*",
            "+@all",
        ])
        .unwrap();
    server
}

fn plain_url(server: &RedisServer) -> String {
    format!("redis://127.0.0.1:{}", server.port())
}

fn assert_no_password(text: &str) {
    for p in [PASSWORD, WRONG, ALICE_PASSWORD] {
        assert!(!text.contains(p), "password {p:?} leaked into: {text}");
    }
}

/// The message of a rejected-credentials error, checked for what it must say.
fn assert_rejected(e: &fredkit_core::Error, user: &str, server: &RedisServer, what: &str) {
    assert_eq!(e.kind(), ErrorKind::Config, "{e}");
    let text = e.to_string();
    assert!(
        text.contains(&format!(
            "the server rejected the credentials for user '{user}' at redis://"
        )),
        "{text}"
    );
    assert!(
        text.contains(&format!("127.0.0.1:{}", server.port())),
        "{text}"
    );
    assert!(text.contains(what), "should say {what:?}: {text}");
    assert_no_password(&text);
    assert_no_password(&format!("{e:?}"));
}

/// `(config, user named in the error, what the error must also say)`.
fn bad_credentials(
    server: &RedisServer,
    lazy: bool,
) -> Vec<(&'static str, RedisConfig, &'static str, &'static str)> {
    let base = || {
        RedisConfig::builder()
            .url(plain_url(server))
            .lazy(lazy)
            // Far longer than the failure takes to report: an error that
            // waits for the connect timeout shows as the hang guard firing.
            .connect_timeout(Duration::from_secs(30))
    };
    vec![
        (
            "wrong password",
            base().password(WRONG).build().unwrap(),
            "default",
            "WRONGPASS",
        ),
        (
            "missing password",
            base().build().unwrap(),
            "default",
            "no password is configured",
        ),
        (
            "wrong user",
            base()
                .username("bob")
                .password(ALICE_PASSWORD)
                .build()
                .unwrap(),
            "bob",
            "WRONGPASS",
        ),
        (
            "acl user, wrong password",
            base().username("alice").password(WRONG).build().unwrap(),
            "alice",
            "check the user name and password",
        ),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rejected_credentials_fail_connect_at_once_with_a_config_error() {
    let server = protected_server();
    for (case, config, user, what) in bad_credentials(&server, false) {
        let r = tokio::time::timeout(NO_HANG, Redis::connect(config))
            .await
            .unwrap_or_else(|_| panic!("{case}: waited for the connect timeout"));
        let e = r.err().unwrap_or_else(|| panic!("{case}: connected"));
        assert_rejected(&e, user, &server, what);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_health_and_last_error_report_rejected_credentials() {
    let server = protected_server();
    for (case, config, user, what) in bad_credentials(&server, true) {
        // Lazy: connect returns at once, commands wait.
        let redis = Redis::connect(config).await.unwrap();
        let e = tokio::time::timeout(NO_HANG, redis.client().get::<Option<String>, _>("k"))
            .await
            .unwrap_or_else(|_| panic!("{case}: GET hung"))
            .unwrap_err();
        // The same whether the fred error was converted already (by `?` or
        // by a fredkit primitive) or not.
        let converted = redis.diagnose(fredkit_core::Error::from(e.clone()));
        assert_rejected(&converted, user, &server, what);
        let diagnosed = redis.diagnose(e);
        assert_rejected(&diagnosed, user, &server, what);
        // A WRONGPASS/NOAUTH reply to a command says the same.
        let reply = fred::error::Error::new(
            fred::error::ErrorKind::Auth,
            "WRONGPASS invalid username-password pair or user is disabled.",
        );
        assert_rejected(&redis.diagnose(reply.clone()), user, &server, "WRONGPASS");
        assert_rejected(
            &redis.diagnose(fredkit_core::Error::from(reply)),
            user,
            &server,
            "WRONGPASS",
        );

        let last = redis
            .last_connection_error()
            .unwrap_or_else(|| panic!("{case}: no last connection error"));
        assert_rejected(&last, user, &server, what);

        let health = tokio::time::timeout(NO_HANG, redis.health())
            .await
            .unwrap_or_else(|_| panic!("{case}: health hung"));
        assert!(!health.reachable, "{case}: {health}");
        assert_eq!(
            health.error_kind,
            Some(ErrorKind::Config),
            "{case}: {health}"
        );
        let text = health.to_string();
        assert!(
            text.contains(&format!(
                "the server rejected the credentials for user '{user}'"
            )),
            "{case}: {text}"
        );
        assert!(text.contains(what), "{case}: {text}");
        assert_no_password(&text);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn right_credentials_connect_and_report_nothing() {
    let server = protected_server();
    for config in [
        RedisConfig::builder()
            .url(plain_url(&server))
            .password(PASSWORD)
            .lazy(false)
            .build()
            .unwrap(),
        RedisConfig::builder()
            .url(plain_url(&server))
            .username("alice")
            .password(ALICE_PASSWORD)
            .lazy(false)
            .build()
            .unwrap(),
    ] {
        let redis = Redis::connect(config).await.unwrap();
        let _: () = redis
            .client()
            .set("k", "v", None, None, false)
            .await
            .unwrap();
        assert!(redis.last_connection_error().is_none());
        let health = redis.health().await;
        assert!(health.reachable, "{health}");
        assert_eq!(health.error_kind, None);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_connections_name_the_url_and_say_connection_refused() {
    // A port nothing listens on: a server that was started, then killed.
    let mut server = RedisServer::start().unwrap();
    server.kill().unwrap();
    let url = format!("redis://:{PASSWORD}@127.0.0.1:{}", server.port());
    let config = RedisConfig::builder()
        .url(&url)
        .connect_timeout(Duration::from_millis(1500))
        .build()
        .unwrap();

    let redis = Redis::connect(config).await.unwrap();
    let e = tokio::time::timeout(NO_HANG, redis.wait_connected())
        .await
        .expect("wait_connected hung")
        .unwrap_err();
    // Still a timeout (as documented), saying why.
    assert_eq!(e.kind(), ErrorKind::Timeout, "{e}");
    let text = e.to_string();
    assert!(
        text.contains("connection refused by redis://:***@127.0.0.1:"),
        "{text}"
    );
    assert!(text.contains(&server.port().to_string()), "{text}");
    assert_no_password(&text);

    let e = tokio::time::timeout(NO_HANG, redis.client().get::<Option<String>, _>("k"))
        .await
        .expect("GET hung")
        .unwrap_err();
    let diagnosed = redis.diagnose(e);
    assert_eq!(diagnosed.kind(), ErrorKind::Timeout, "{diagnosed}");
    assert!(
        diagnosed.to_string().contains("connection refused by"),
        "{diagnosed}"
    );

    let health = redis.health().await;
    assert!(!health.reachable);
    assert_eq!(health.error_kind, Some(ErrorKind::Timeout), "{health}");
    let last = redis
        .last_connection_error()
        .expect("no last connection error");
    assert_eq!(last.kind(), ErrorKind::Connection, "{last}");
    assert!(last.to_string().contains("connection refused by"), "{last}");
    assert!(
        health.to_string().contains("connection refused"),
        "{health}"
    );
    assert_no_password(&health.to_string());
}

/// Rotation without a restart (#24): the password of the ACL user changes on
/// the server and in the credential provider, then the server kills the
/// user's connections. The client reconnects with what the provider says
/// now; meanwhile no command fails with anything but a timeout or a
/// connection error, and commands succeed again after the reconnect.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotated_password_is_used_after_client_kill() {
    use fred::interfaces::ClientLike;
    use fredkit_conn::{credentials_fn, Credentials};
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::{Arc, Mutex};

    let server = protected_server();
    let set_password = |password: &str| {
        server
            .command(&[
                "ACL",
                "SETUSER",
                "rotor",
                "on",
                "resetpass",
                &format!(">{password}"),
                "~*",
                "+@all",
            ])
            .unwrap();
    };
    set_password("rotor-pass-1");
    let current = Arc::new(Mutex::new("rotor-pass-1".to_string()));
    let asked = Arc::new(AtomicU64::new(0));
    let provider = {
        let (current, asked) = (current.clone(), asked.clone());
        credentials_fn(move || {
            asked.fetch_add(1, Ordering::SeqCst);
            let password = current.lock().unwrap().clone();
            async move { Ok(Credentials::new("rotor", password)) }
        })
    };
    let config = RedisConfig::builder()
        .url(plain_url(&server))
        .credentials(provider)
        .lazy(false)
        .build()
        .unwrap();
    let redis = Redis::connect(config).await.unwrap();
    let _: () = redis
        .client()
        .set("k", "v", None, None, false)
        .await
        .unwrap();
    let asked_before = asked.load(Ordering::SeqCst);
    assert!(asked_before >= 1);
    // No secret in fred's configuration: its Debug has none to print.
    let fred_config = format!("{:?}", redis.client().client_config());
    assert!(!fred_config.contains("rotor-pass"), "{fred_config}");

    // Rotate: the old password stops working on the server.
    set_password("rotor-pass-2");
    *current.lock().unwrap() = "rotor-pass-2".to_string();
    server
        .command(&["CLIENT", "KILL", "USER", "rotor"])
        .unwrap();

    let (mut ok, mut unavailable, mut other) = (0u32, 0u32, Vec::new());
    for _ in 0..200 {
        let r: Result<Option<String>, _> = redis.client().get("k").await;
        match r.map_err(fredkit_core::Error::from) {
            Ok(v) => {
                assert_eq!(v.as_deref(), Some("v"));
                ok += 1;
            }
            Err(e) if matches!(e.kind(), ErrorKind::Timeout | ErrorKind::Connection) => {
                unavailable += 1
            }
            Err(e) => other.push(e.to_string()),
        }
        if ok >= 20 {
            break;
        }
    }
    assert!(
        other.is_empty(),
        "only timeouts or connection errors: {other:?}"
    );
    assert_eq!(
        ok, 20,
        "commands succeed again ({unavailable} were unavailable)"
    );
    assert!(
        asked.load(Ordering::SeqCst) > asked_before,
        "the provider was asked again on reconnect"
    );
    // The connection is really the rotated user's.
    let list = server.command(&["CLIENT", "LIST"]).unwrap();
    assert!(
        list.as_str().is_some_and(|l| l.contains("user=rotor")),
        "{list:?}"
    );
    redis.shutdown().await.unwrap();
}
