//! A single server: lifecycle, restart semantics and fault controls, against real processes.

// Helpers outside #[test] functions are test code too.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::time::Duration;

use fredkit_testkit::{RedisServer, Reply, ServerOptions, TestkitError};

fn get(server: &RedisServer, key: &str) -> Reply {
    server.command(&["GET", key]).unwrap()
}

#[test]
fn started_server_answers_on_its_reported_port_addr_and_url() {
    let server = RedisServer::start().unwrap();
    let port = server.port();
    assert_eq!(server.addr(), format!("127.0.0.1:{port}"));
    assert_eq!(server.url(), format!("redis://127.0.0.1:{port}"));
    assert!(server.is_running());
    assert!(server.pid().is_some());
    assert_eq!(
        server.command(&["PING"]).unwrap(),
        Reply::Status("PONG".into())
    );
    // Error replies are data, not transport errors.
    assert!(server.command(&["NO-SUCH-COMMAND"]).unwrap().is_error());
    // Our flags are in effect: no RDB snapshots, AOF off by default.
    let save = server.command(&["CONFIG", "GET", "save"]).unwrap();
    assert_eq!(save.as_array().unwrap()[1].as_str(), Some(""));
    let aof = server.command(&["CONFIG", "GET", "appendonly"]).unwrap();
    assert_eq!(aof.as_array().unwrap()[1].as_str(), Some("no"));
}

#[test]
fn two_servers_never_share_a_port() {
    let a = RedisServer::start().unwrap();
    let b = RedisServer::start().unwrap();
    assert_ne!(a.port(), b.port());
    assert_ne!(a.dir(), b.dir());
}

#[test]
fn password_is_required_and_used_by_url_and_command() {
    let server = RedisServer::start_with(ServerOptions::default().password("s3cr:t")).unwrap();
    assert_eq!(
        server.url(),
        format!("redis://:s3cr%3At@127.0.0.1:{}", server.port())
    );
    assert_eq!(server.password(), Some("s3cr:t"));
    assert_eq!(
        server.command(&["SET", "k", "v"]).unwrap().as_str(),
        Some("OK")
    );
    // Without AUTH the server refuses.
    let mut raw = std::net::TcpStream::connect(server.addr()).unwrap();
    raw.write_all(b"PING\r\n").unwrap();
    let mut line = String::new();
    BufReader::new(raw).read_line(&mut line).unwrap();
    assert!(line.starts_with("-NOAUTH"), "{line}");
    let requirepass = server.command(&["CONFIG", "GET", "requirepass"]).unwrap();
    assert_eq!(requirepass.as_array().unwrap()[1].as_str(), Some("s3cr:t"));
}

#[test]
fn extra_args_override_the_testkit_defaults() {
    let server = RedisServer::start_with(
        ServerOptions::default()
            .arg("maxmemory", "10mb")
            .arg("--appendonly", "yes"),
    )
    .unwrap();
    let maxmemory = server.command(&["CONFIG", "GET", "maxmemory"]).unwrap();
    assert_eq!(maxmemory.as_array().unwrap()[1].as_str(), Some("10485760"));
    let aof = server.command(&["CONFIG", "GET", "appendonly"]).unwrap();
    assert_eq!(aof.as_array().unwrap()[1].as_str(), Some("yes"));
}

#[test]
fn dropping_a_server_kills_it_and_removes_its_dir() {
    let server = RedisServer::start().unwrap();
    let pid = server.pid().unwrap();
    let dir = server.dir().to_path_buf();
    assert!(dir.join("redis.log").exists());
    drop(server);
    assert!(!Path::new(&format!("/proc/{pid}")).exists() || is_zombie(pid));
    assert!(!dir.exists());
}

fn is_zombie(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| {
            s.rsplit(')')
                .next()
                .unwrap_or("")
                .trim_start()
                .starts_with('Z')
        })
        .unwrap_or(true)
}

#[test]
fn a_nonexistent_binary_fails_with_an_install_hint() {
    let err = RedisServer::start_with(ServerOptions::default().binary("/nonexistent/redis-server"))
        .unwrap_err();
    assert!(matches!(err, TestkitError::BinaryNotFound { .. }));
    let text = err.to_string();
    assert!(text.contains("/nonexistent/redis-server"), "{text}");
    assert!(
        text.contains("apt-get install redis-server redis-tools redis-sentinel"),
        "{text}"
    );
}

#[test]
fn a_server_that_cannot_start_reports_its_log() {
    let err =
        RedisServer::start_with(ServerOptions::default().arg("no-such-option", "1")).unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, TestkitError::Exited { .. }), "{text}");
    assert!(text.contains("no-such-option"), "{text}");
}

/// Tests that kill, pause or fail over servers: nextest runs `faults::` tests one at a time.
mod faults {
    use super::*;

    #[test]
    fn with_aof_data_survives_kill_and_restart_on_the_same_port() {
        let mut server = RedisServer::start_with(ServerOptions::default().aof(true)).unwrap();
        let port = server.port();
        let old_pid = server.pid().unwrap();
        server.command(&["SET", "durable", "yes"]).unwrap();

        server.kill().unwrap();
        assert!(!server.is_running());
        assert_eq!(server.pid(), None);
        server.restart().unwrap();

        assert_eq!(server.port(), port);
        assert_ne!(server.pid().unwrap(), old_pid);
        assert_eq!(get(&server, "durable").as_str(), Some("yes"));
    }

    #[test]
    fn without_aof_kill_and_restart_loses_the_data() {
        let mut server = RedisServer::start().unwrap();
        let port = server.port();
        server.command(&["SET", "volatile", "yes"]).unwrap();

        server.kill().unwrap();
        server.restart().unwrap();

        assert_eq!(server.port(), port);
        assert!(get(&server, "volatile").is_nil());
    }

    #[test]
    fn killed_server_refuses_commands_and_signals_until_restarted() {
        let mut server = RedisServer::start().unwrap();
        server.kill().unwrap();
        // Killing twice is harmless.
        server.kill().unwrap();
        assert!(matches!(
            server.command(&["PING"]),
            Err(TestkitError::NotRunning { .. })
        ));
        assert!(matches!(
            server.pause(),
            Err(TestkitError::NotRunning { .. })
        ));
        // Nothing listens on the port any more.
        assert!(std::net::TcpStream::connect(server.addr()).is_err());
        server.restart().unwrap();
        assert!(server.command(&["PING"]).is_ok());
    }

    #[test]
    fn paused_server_times_out_commands_and_answers_after_resume() {
        let server = RedisServer::start().unwrap();
        server.pause().unwrap();
        assert!(server.is_paused());

        let err = server
            .command_with_timeout(&["PING"], Duration::from_millis(300))
            .unwrap_err();
        assert!(err.is_timeout(), "{err}");

        server.resume().unwrap();
        assert!(!server.is_paused());
        assert_eq!(
            server.command(&["PING"]).unwrap(),
            Reply::Status("PONG".into())
        );
    }

    #[test]
    fn client_pause_holds_commands_until_it_expires() {
        let server = RedisServer::start().unwrap();
        server.client_pause(Duration::from_millis(1500)).unwrap();

        let err = server
            .command_with_timeout(&["SET", "k", "v"], Duration::from_millis(200))
            .unwrap_err();
        assert!(err.is_timeout(), "{err}");

        // The same command completes once the pause ends (well within the 5 s socket timeout).
        assert_eq!(
            server.command(&["SET", "k", "v"]).unwrap().as_str(),
            Some("OK")
        );
    }

    #[test]
    fn a_paused_server_is_still_killed_and_restartable() {
        let mut server = RedisServer::start().unwrap();
        let pid = server.pid().unwrap();
        server.pause().unwrap();
        server.kill().unwrap();
        assert!(!server.is_paused());
        assert!(!Path::new(&format!("/proc/{pid}")).exists() || is_zombie(pid));
        server.restart().unwrap();
        assert!(server.command(&["PING"]).is_ok());
        server.pause().unwrap();
        drop(server); // must not hang on the stopped process
    }
}

/// fredkit never enumerates with KEYS: no server of the test suite has the
/// command, so a KEYS anywhere in the library fails every test that reaches it.
#[test]
fn started_servers_have_no_keys_command() {
    let server = RedisServer::start().unwrap();
    let reply = server.command(&["KEYS", "*"]).unwrap();
    let error = reply
        .as_error()
        .unwrap_or_else(|| panic!("KEYS answered {reply:?}"));
    assert!(error.contains("unknown command"), "{error}");
    // SCAN, what fredkit uses instead, works.
    assert!(!server.command(&["SCAN", "0"]).unwrap().is_error());
}

/// `with_lost_reply`: the server runs the command, its reply is lost with
/// the connection, and fred sends it again: an INCR runs twice and the
/// caller sees the second run's reply.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_with_lost_reply_makes_the_server_run_a_command_twice() {
    use fred::prelude::*;
    let server = RedisServer::start().unwrap();
    // The INCR waits out the freeze, the kill and the reconnection before its reply: more
    // than the default 1 s command timeout on a loaded machine (seen: "Request timed out.").
    let url = format!("{}?command_timeout=10s", server.url());
    let redis = fredkit_testkit::connect(&url).await.unwrap();
    let client = redis.client().clone();
    // "*2\r\n$4\r\nINCR\r\n$7\r\ncounter\r\n" is 27 bytes; a watchdog PING is 14.
    let seen: i64 = fredkit_testkit::with_lost_reply(&server, 25, async move {
        client.incr::<i64, _>("counter").await
    })
    .await
    .unwrap()
    .unwrap();
    assert_eq!(seen, 2, "the caller sees the resent command's reply");
    let stored = server.command(&["GET", "counter"]).unwrap();
    assert_eq!(stored.as_bytes(), Some(&b"2"[..]), "INCR ran twice");
    redis.shutdown().await.unwrap();
}
