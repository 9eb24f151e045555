//! A check whose reply is lost: the server ran the script, then the
//! connection was killed before the reply left, and fred sent the check
//! again on a new connection, where the script ran a second time. The
//! limiter's documented outcome: the cost may be consumed twice — stricter
//! than the limit, never looser. The same for the login throttle: a failure
//! may be counted twice (a lockout one failure early), never lost.
//!
//! How the reply is lost, deterministically: the server is frozen
//! (SIGSTOP); the check is sent; once its bytes are in the server socket's
//! receive queue (`/proc/net/tcp`), a connection opened beforehand sends
//! `CLIENT KILL TYPE normal SKIPME yes`, and once those bytes are queued too
//! the server resumes. It handles the two sockets in the order their data
//! arrived: it runs the script, then kills the connection whose reply was
//! still waiting to be written. Each test checks from `INFO commandstats`
//! that the script did run twice.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::future::Future;
use std::time::Duration;

use fredkit_conn::{Redis, RedisConfig};
use fredkit_core::FailMode;
use fredkit_ratelimit::{Algorithm, Limit, Limiter, LoginThrottle};
use fredkit_testkit::{RedisServer, Reply};
use rstest::rstest;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

/// Established connections to `port` on this machine (server side) with
/// their peer's port and the bytes waiting in their receive queue.
fn receive_queues(port: u16) -> Vec<(u16, u64)> {
    let mut out = Vec::new();
    for file in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(file) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() < 5 || f[3] != "01" {
                continue;
            }
            let port_of = |a: &str| u16::from_str_radix(a.rsplit(':').next().unwrap(), 16).unwrap();
            if port_of(f[1]) != port {
                continue;
            }
            let rx = u64::from_str_radix(f[4].split(':').nth(1).unwrap(), 16).unwrap();
            out.push((port_of(f[2]), rx));
        }
    }
    out
}

/// Waits (at most 20 s) until a server-side socket of `port` matches.
async fn wait_queued(port: u16, what: &str, mut found: impl FnMut(u16, u64) -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !receive_queues(port).into_iter().any(|(p, rx)| found(p, rx)) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "never queued: {what} ({:?})",
            receive_queues(port)
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

fn resp(args: &[&str]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", args.len()).into_bytes();
    for a in args {
        out.extend_from_slice(format!("${}\r\n{a}\r\n", a.len()).as_bytes());
    }
    out
}

/// Runs `op` (one command to `server`) so that the server executes it and
/// its reply is lost with its connection; returns what `op` returns once
/// fred has sent the command again.
async fn with_lost_reply<T: Send + 'static>(
    server: &RedisServer,
    op: impl Future<Output = T> + Send + 'static,
) -> T {
    let port = server.port();
    // The killer sends nothing before its CLIENT KILL: a socket that was
    // readable in the server's last event-loop turn may still sit at the
    // head of its (level-triggered) epoll ready list and be served first.
    // It only has to be accepted (listed) before the freeze.
    let killer = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let killer_port = killer.local_addr().unwrap().port();
    let mut killer = BufReader::new(killer);
    let listed = format!("addr=127.0.0.1:{killer_port} ");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let Reply::Bulk(Some(list)) = server.command(&["CLIENT", "LIST"]).unwrap() else {
            panic!("CLIENT LIST");
        };
        if String::from_utf8_lossy(&list).contains(&listed) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the killer connection was never accepted"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let mut line = String::new();
    server.pause().unwrap();
    // SIGSTOP takes effect when the process is next scheduled: until then
    // it could still collect the command's readiness in one epoll_wait and
    // the kill's in the next (then the reply goes out before the kill).
    let stat = format!("/proc/{}/stat", server.pid().unwrap());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let text = std::fs::read_to_string(&stat).unwrap();
        let state = text
            .rsplit(')')
            .next()
            .unwrap()
            .split_whitespace()
            .next()
            .unwrap();
        if state == "T" || state == "t" {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the server never stopped: {text}"
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let task = tokio::spawn(op);
    // A script call is well over 60 bytes (a watchdog PING is 14), and
    // fred may write it in two segments, the second held back by Nagle's
    // algorithm until the frozen server's kernel ACKs the first (a delayed
    // ACK: up to 40 ms): the command is complete once its queue has stopped
    // growing for 100 ms.
    let queued = tokio::spawn(async move {
        wait_queued(port, "the operation's command", |p, rx| {
            p != killer_port && rx >= 60
        })
        .await;
        let command_bytes = |q: Vec<(u16, u64)>| -> u64 {
            q.into_iter()
                .filter(|(p, _)| *p != killer_port)
                .map(|(_, rx)| rx)
                .max()
                .unwrap_or(0)
        };
        let mut seen = command_bytes(receive_queues(port));
        let mut stable_since = tokio::time::Instant::now();
        while stable_since.elapsed() < Duration::from_millis(100) {
            tokio::time::sleep(Duration::from_millis(10)).await;
            let now = command_bytes(receive_queues(port));
            if now != seen {
                seen = now;
                stable_since = tokio::time::Instant::now();
            }
        }
    })
    .await;
    if queued.is_err() {
        server.resume().unwrap();
        panic!("the operation's command never reached the frozen server");
    }
    killer
        .get_mut()
        .write_all(&resp(&[
            "CLIENT", "KILL", "TYPE", "normal", "SKIPME", "yes",
        ]))
        .await
        .unwrap();
    wait_queued(port, "CLIENT KILL", |p, rx| p == killer_port && rx > 0).await;
    server.resume().unwrap();
    line.clear();
    killer.read_line(&mut line).await.unwrap();
    let killed: i64 = line.trim_start_matches(':').trim().parse().unwrap();
    assert!(killed >= 1, "CLIENT KILL killed nothing: {line}");
    tokio::time::timeout(Duration::from_secs(30), task)
        .await
        .expect("the operation did not finish after the reconnection")
        .unwrap()
}

/// Script runs so far (`EVALSHA` and `EVAL` calls).
fn script_runs(server: &RedisServer) -> u64 {
    let Reply::Bulk(info) = server.command(&["INFO", "commandstats"]).unwrap() else {
        panic!("INFO commandstats");
    };
    let info = String::from_utf8(info.unwrap()).unwrap();
    info.lines()
        .filter(|l| l.starts_with("cmdstat_evalsha:") || l.starts_with("cmdstat_eval:"))
        .map(|l| {
            let calls = l.split("calls=").nth(1).unwrap();
            calls.split(',').next().unwrap().parse::<u64>().unwrap()
        })
        .sum()
}

/// A client whose commands wait 10 s before timing out: the freeze is far
/// shorter, so nothing but the kill ends the first attempt.
async fn client(server: &RedisServer) -> Redis {
    let config = RedisConfig::builder()
        .url(server.url())
        .command_timeout(Duration::from_secs(10))
        .pool_size(1)
        .build()
        .unwrap();
    let redis = Redis::connect(config).await.unwrap();
    redis.wait_connected().await.unwrap();
    redis
}

fn limit(algorithm: Algorithm, quota: u64) -> Limit {
    let hour = Duration::from_secs(3600);
    match algorithm {
        Algorithm::FixedWindow => Limit::fixed_window(quota, hour),
        Algorithm::SlidingLog => Limit::sliding_log(quota, hour),
        Algorithm::SlidingCounter => Limit::sliding_counter(quota, hour),
        Algorithm::Gcra => Limit::gcra(quota, hour),
        other => panic!("unknown algorithm {other:?}"),
    }
}

/// A check of cost 3 against a quota of 10 whose reply is lost runs twice
/// and consumes 6: the caller gets the second run's answer (allowed, from
/// Redis, not the fail mode's), and every later caller together gets at
/// most the 4 left: 3 + 4 <= 10, stricter, never looser.
#[rstest]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_client_kill_lost_check_reply_consumes_at_most_twice_never_more_than_the_quota(
    #[values(
        Algorithm::FixedWindow,
        Algorithm::SlidingLog,
        Algorithm::SlidingCounter,
        Algorithm::Gcra
    )]
    algorithm: Algorithm,
) {
    let server = RedisServer::start().unwrap();
    let redis = client(&server).await;
    let (quota, cost) = (10u64, 3u32);
    let limiter = Limiter::builder(&redis, "lost")
        .limit(limit(algorithm, quota))
        .fail_mode(FailMode::Closed)
        .build()
        .unwrap();
    // The script is cached: the checks below are one EVALSHA each.
    assert!(limiter.check("warm-up", 1).await.unwrap().allowed);

    let before = script_runs(&server);
    let outcome = {
        let limiter = limiter.clone();
        with_lost_reply(&server, async move { limiter.check_all("id", cost).await }).await
    }
    .unwrap();
    let runs = script_runs(&server) - before;
    assert_eq!(
        runs, 2,
        "the script ran {runs} times, not twice (once, then again when fred resent it)"
    );
    assert_eq!(
        outcome.fallback(),
        None,
        "answered by the fail mode, not Redis"
    );
    assert!(outcome.allowed(), "{outcome:?}");

    let state = limiter.check("id", 0).await.unwrap();
    let consumed = quota - state.remaining;
    assert!(
        consumed == u64::from(cost) || consumed == 2 * u64::from(cost),
        "consumed {consumed} for one check of cost {cost} (at most twice)"
    );
    let mut later = 0u64;
    while limiter.check("id", 1).await.unwrap().allowed {
        later += 1;
        assert!(later <= quota, "no denial in sight");
    }
    let granted = u64::from(cost) + later;
    assert!(
        granted <= quota,
        "{granted} units granted against a quota of {quota}: looser than the limit"
    );
    assert_eq!(later, quota - consumed, "later checks got what was left");
}

/// A failed login whose reply is lost is counted twice (the lockout comes
/// one failure early), never lost: with 3 allowed failures, the lost one
/// and one more lock the identity.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_client_kill_lost_login_failure_reply_counts_it_at_most_twice() {
    let server = RedisServer::start().unwrap();
    let redis = client(&server).await;
    let throttle = LoginThrottle::builder(&redis, "lost")
        .max_failures(3)
        .failure_window(Duration::from_secs(3600))
        .lockout(Duration::from_secs(3600))
        .fail_mode(FailMode::Closed)
        .build()
        .unwrap();
    assert!(!throttle.record_failure("warm-up").await.unwrap().locked);

    let before = script_runs(&server);
    let status = {
        let throttle = throttle.clone();
        with_lost_reply(&server, async move { throttle.record_failure("id").await }).await
    }
    .unwrap();
    let runs = script_runs(&server) - before;
    assert_eq!(
        runs, 2,
        "the script ran {runs} times, not twice (once, then again when fred resent it)"
    );
    assert_eq!(status.fallback, None);
    assert_eq!(status.failures, 2, "the second run answers: {status:?}");
    assert!(!status.locked);
    let next = throttle.record_failure("id").await.unwrap();
    assert!(next.locked, "{next:?}");
}
