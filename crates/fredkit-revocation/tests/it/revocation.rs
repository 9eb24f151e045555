//! fredkit-revocation against real servers, standalone and cluster.
//!
//! The servers run on this machine, so the test's clock is the servers'
//! clock (to the millisecond); the store itself only uses the server's.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[allow(dead_code)]
use fredkit_testkit::capture;

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fred::prelude::*;
use fredkit_conn::Redis;
use fredkit_core::{BreakerState, CircuitBreaker, ErrorKind, FailMode};
use fredkit_revocation::{
    RevocationOptions, RevocationOptionsBuilder, RevocationStore, Revocations, Revoked, TokenClaims,
};
use fredkit_testkit::{
    shared_url, unique_prefix, ClusterOptions, RedisCluster, RedisServer, Topology,
};
use futures::StreamExt;
use rstest::rstest;

async fn connect(url: &str) -> Redis {
    fredkit_testkit::connect(url).await.unwrap()
}

/// A unique prefix without the trailing ':' (a KeySpace prefix may not end with one).
fn prefix(test: &str) -> String {
    unique_prefix(test).trim_end_matches(':').to_string()
}

fn options(test: &str, mode: FailMode) -> RevocationOptionsBuilder {
    RevocationOptions::builder(mode)
        .prefix(prefix(test))
        .max_token_lifetime(Duration::from_secs(3600))
}

async fn store(redis: &Redis, builder: RevocationOptionsBuilder) -> Revocations {
    Revocations::new(redis, builder.build().unwrap())
        .await
        .unwrap()
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

fn now_secs() -> u64 {
    now_ms() / 1000
}

fn at_secs(s: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(s)
}

fn token(jti: &str, sub: &str, org: Option<&str>, iat: u64, exp: u64) -> TokenClaims {
    TokenClaims {
        jti: jti.into(),
        sub: sub.into(),
        org: org.map(Into::into),
        iat,
        exp,
    }
}

async fn sleep_until_ms(ms: u64) {
    let now = now_ms();
    if ms > now {
        tokio::time::sleep(Duration::from_millis(ms - now)).await;
    }
}

#[rstest]
#[case::standalone(Topology::Standalone)]
#[case::cluster(Topology::Cluster)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoked_token_is_revoked_until_exp_and_its_key_is_gone_within_a_second_after(
    #[case] topology: Topology,
) {
    let redis = connect(&shared_url(topology).unwrap()).await;
    let store = store(&redis, options("revoke_until_exp", FailMode::Closed)).await;
    let key = format!("{}:jti:tok-1", store.options().keys().prefix());
    let exp = now_secs() + 2;
    let claims = token("tok-1", "alice", None, exp - 60, exp);

    assert!(!store.is_revoked("tok-1").await.unwrap());
    assert_eq!(
        store.revoke("tok-1", at_secs(exp)).await.unwrap(),
        Revoked::Now
    );
    // The record expires exactly at exp, never earlier...
    let pexpiretime: i64 = redis.client().pexpire_time(&key).await.unwrap();
    assert_eq!(pexpiretime, (exp * 1000) as i64);
    // ...and an earlier expiry never shortens it.
    assert_eq!(
        store.revoke("tok-1", at_secs(exp - 1)).await.unwrap(),
        Revoked::Already
    );
    let unchanged: i64 = redis.client().pexpire_time(&key).await.unwrap();
    assert_eq!(unchanged, (exp * 1000) as i64);

    // Revoked at every moment before exp, by id and by check.
    let mut checked_before_exp = 0;
    let mut revoked_answers = 0;
    loop {
        let before = now_ms();
        let by_id = store.is_revoked("tok-1").await.unwrap();
        let by_check = store.check(&claims).await.unwrap();
        let after = now_ms();
        revoked_answers += u64::from(by_id) + u64::from(by_check);
        if after < exp * 1000 {
            assert!(by_id && by_check, "revoked token accepted before its exp");
            checked_before_exp += 1;
        }
        if before >= exp * 1000 {
            assert!(!by_id && !by_check, "record outlived exp");
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Not vacuous: at least one check ran (and found it revoked) before exp.
    assert!(checked_before_exp >= 1, "no check ran before exp");
    // Gone after exp: the first reads started after it found no record (the
    // loop above), and so does a raw EXISTS. (Its PXAT is exp itself, so
    // "gone within 1 s after exp" holds by construction, whatever this
    // machine's load; the test does not time itself.)
    let exists: i64 = redis.client().exists(&key).await.unwrap();
    assert_eq!(exists, 0);

    // Revoking an already-expired token is a no-op.
    assert_eq!(
        store
            .revoke("tok-2", at_secs(now_secs() - 1))
            .await
            .unwrap(),
        Revoked::Expired
    );
    let exists: i64 = redis
        .client()
        .exists(format!("{}:jti:tok-2", store.options().keys().prefix()))
        .await
        .unwrap();
    assert_eq!(exists, 0);
    let m = store.metrics();
    assert_eq!(m.fail_open + m.fail_closed, 0);
    assert_eq!(m.revoked_hits, revoked_answers);
    assert!(revoked_answers >= 2);
}

#[rstest]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leeway_keeps_the_record_past_exp_by_exactly_the_leeway(
    #[values(Topology::Standalone, Topology::Cluster)] topology: Topology,
) {
    let redis = connect(&shared_url(topology).unwrap()).await;
    let store = store(
        &redis,
        options("revoke_leeway", FailMode::Closed).expiry_leeway(Duration::from_secs(60)),
    )
    .await;
    // Expired 10 s ago by exp, but still inside the validator's 60 s leeway.
    let exp = now_secs() - 10;
    assert_eq!(
        store.revoke("late", at_secs(exp)).await.unwrap(),
        Revoked::Now
    );
    let key = format!("{}:jti:late", store.options().keys().prefix());
    let t: i64 = redis.client().pexpire_time(&key).await.unwrap();
    assert_eq!(t, (exp * 1000 + 60_000) as i64);
    assert!(store.is_revoked("late").await.unwrap());
}

#[derive(Debug, Clone, Copy)]
enum Scope {
    Subject,
    Org,
}

#[rstest]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cutoff_revokes_tokens_issued_at_or_before_it_and_not_after(
    #[values(Topology::Standalone, Topology::Cluster)] topology: Topology,
    #[values(Scope::Subject, Scope::Org)] scope: Scope,
) {
    let redis = connect(&shared_url(topology).unwrap()).await;
    let lifetime = 3600;
    let store = store(&redis, options("cutoff", FailMode::Open)).await;
    let t = now_secs();
    // Same subject/org for all; the "other" token shares nothing.
    let claims = |jti: &str, iat: u64| match scope {
        Scope::Subject => token(jti, "bob", None, iat, iat + 600),
        Scope::Org => token(jti, &format!("user-{jti}"), Some("acme"), iat, iat + 600),
    };
    let other = |iat: u64| match scope {
        Scope::Subject => token("o", "carol", None, iat, iat + 600),
        Scope::Org => token("o", "dave", Some("globex"), iat, iat + 600),
    };
    // `at` inside second t: the cut-off is second t.
    let at = at_secs(t) + Duration::from_millis(700);
    let cut = match scope {
        Scope::Subject => store.revoke_subject("bob", at).await.unwrap(),
        Scope::Org => store.revoke_org("acme", at).await.unwrap(),
    };
    assert_eq!(cut, t);
    assert!(store.check(&claims("before", t - 1)).await.unwrap());
    assert!(
        store.check(&claims("same-second", t)).await.unwrap(),
        "a token of the cut-off's second is revoked (it may have been issued before it)"
    );
    assert!(!store.check(&claims("after", t + 1)).await.unwrap());
    assert!(!store.check(&other(t - 1)).await.unwrap());
    // A token revoked by id is revoked whatever its iat.
    store.revoke("after", at_secs(t + 601)).await.unwrap();
    assert!(store.check(&claims("after", t + 1)).await.unwrap());

    // Never moves back; its record lives until cut-off + max lifetime.
    let earlier = at_secs(t - 100);
    let kept = match scope {
        Scope::Subject => store.revoke_subject("bob", earlier).await.unwrap(),
        Scope::Org => store.revoke_org("acme", earlier).await.unwrap(),
    };
    assert_eq!(kept, t);
    assert!(!store.check(&claims("after2", t + 1)).await.unwrap());
    let key = match scope {
        Scope::Subject => format!("{}:sub:bob", store.options().keys().prefix()),
        Scope::Org => format!("{}:org:acme", store.options().keys().prefix()),
    };
    let expiry: i64 = redis.client().pexpire_time(&key).await.unwrap();
    assert_eq!(expiry, ((t + lifetime) * 1000) as i64);

    // Moving it forward (server clock) covers the later token.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let later = match scope {
        Scope::Subject => store.revoke_subject_now("bob").await.unwrap(),
        Scope::Org => store.revoke_org_now("acme").await.unwrap(),
    };
    assert!(later > t);
    assert!(store.check(&claims("after3", t + 1)).await.unwrap());
    assert!(!store.check(&claims("later", later + 1)).await.unwrap());

    // A cut-off so old that every token it covers has expired writes nothing.
    let ancient = match scope {
        Scope::Subject => store
            .revoke_subject("zed", at_secs(t - 2 * lifetime))
            .await
            .unwrap(),
        Scope::Org => store
            .revoke_org("zedcorp", at_secs(t - 2 * lifetime))
            .await
            .unwrap(),
    };
    assert_eq!(ancient, t - 2 * lifetime);
    let zkey = match scope {
        Scope::Subject => format!("{}:sub:zed", store.options().keys().prefix()),
        Scope::Org => format!("{}:org:zedcorp", store.options().keys().prefix()),
    };
    let exists: i64 = redis.client().exists(&zkey).await.unwrap();
    assert_eq!(exists, 0);
}

/// The first `name-<n>` whose key `prefix:kind:name-<n>` falls in the
/// `third`-th third of the slots: on the 3-master test cluster (slots split
/// evenly), a different master for each third.
fn name_on_master(prefix: &str, kind: &str, name: &str, third: u16) -> String {
    (0..)
        .map(|n| format!("{name}-{n}"))
        .find(|candidate| {
            let slot = fredkit_testkit::key_slot(format!("{prefix}:{kind}:{candidate}").as_bytes());
            (u32::from(slot) * 3 / 16384) as u16 == third
        })
        .unwrap()
}

#[rstest]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_check_reads_id_subject_and_org_keys_even_on_three_different_masters(
    #[values(Topology::Standalone, Topology::Cluster)] topology: Topology,
) {
    let redis = connect(&shared_url(topology).unwrap()).await;
    let store = store(&redis, options("three_masters", FailMode::Open)).await;
    let p = store.options().keys().prefix().to_string();
    let t = now_secs();
    let jti = name_on_master(&p, "jti", "tok", 0);
    let sub = name_on_master(&p, "sub", "user", 1);
    let org = name_on_master(&p, "org", "org", 2);
    let claims = token(&jti, &sub, Some(&org), t, t + 600);
    let mut reads = 0;
    let mut check = |expected: bool| {
        reads += 1;
        let (store, claims) = (store.clone(), claims.clone());
        async move {
            assert_eq!(store.check(&claims).await.unwrap(), expected);
            assert_eq!(store.metrics().redis_reads, reads, "one read per check");
        }
    };
    check(false).await;
    store.revoke_org(&org, at_secs(t)).await.unwrap();
    check(true).await;
    let other_org = token(&jti, &sub, Some("elsewhere"), t, t + 600);
    assert!(!store.check(&other_org).await.unwrap());
    reads += 1;
    store.revoke_subject(&sub, at_secs(t)).await.unwrap();
    let no_org = token(&jti, &sub, None, t, t + 600);
    assert!(store.check(&no_org).await.unwrap());
    reads += 1;
    let fresh_sub = token(&jti, "nobody", None, t, t + 600);
    assert!(!store.check(&fresh_sub).await.unwrap());
    reads += 1;
    store.revoke(&jti, at_secs(t + 600)).await.unwrap();
    assert!(store.check(&fresh_sub).await.unwrap());
    reads += 1;
    let m = store.metrics();
    assert_eq!(m.redis_reads, reads);
    assert_eq!((m.checks, m.revoked_hits), (reads, 3));
}

#[rstest]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tracking_ten_thousand_expired_tokens_leaves_only_the_live_ones(
    #[values(Topology::Standalone, Topology::Cluster)] topology: Topology,
) {
    let redis = connect(&shared_url(topology).unwrap()).await;
    let store = store(&redis, options("tracking", FailMode::Closed)).await;
    let key = format!("{}:active:erin", store.options().keys().prefix());
    let t = now_secs();
    let short_exp = t + 4;
    let long_exp = t + 3000;
    let mut tokens: Vec<TokenClaims> = (0..10_000)
        .map(|i| token(&format!("short-{i}"), "erin", None, t, short_exp))
        .collect();
    tokens.extend((0..3).map(|i| token(&format!("live-{i}"), "erin", None, t, long_exp)));
    store.track_many(&tokens).await.unwrap();
    let n: i64 = redis.client().zcard(&key).await.unwrap();
    assert_eq!(n, 10_003);
    // The set's own expiry follows its latest member.
    let expiry: i64 = redis.client().pexpire_time(&key).await.unwrap();
    assert_eq!(expiry, (long_exp * 1000) as i64);

    sleep_until_ms(short_exp * 1000 + 50).await;
    // Listing already skips the expired ones (server clock), before any trim.
    let listed = store.list_active("erin").await.unwrap();
    assert_eq!(listed.len(), 3);
    assert!(listed
        .iter()
        .all(|a| a.jti.starts_with("live-") && a.expires_at == at_secs(long_exp)));

    // The next write trims: only live tokens remain.
    let live = store
        .track(&token("live-3", "erin", None, now_secs(), long_exp - 1))
        .await
        .unwrap();
    assert_eq!(live, 4);
    let n: i64 = redis.client().zcard(&key).await.unwrap();
    assert_eq!(n, 4);
    // A token that has already expired is not added.
    assert_eq!(
        store
            .track(&token("dead", "erin", None, t - 100, t - 50))
            .await
            .unwrap(),
        4
    );
    let names: Vec<String> = store
        .list_active("erin")
        .await
        .unwrap()
        .into_iter()
        .map(|a| a.jti)
        .collect();
    assert_eq!(names, ["live-3", "live-0", "live-1", "live-2"]);
    let expiry: i64 = redis.client().pexpire_time(&key).await.unwrap();
    assert_eq!(expiry, (long_exp * 1000) as i64);

    // When the last token expires the set goes with it.
    let gone_sub = "frank";
    let exp = now_secs() + 1;
    store
        .track(&token("f1", gone_sub, None, exp - 1, exp))
        .await
        .unwrap();
    sleep_until_ms(exp * 1000 + 50).await;
    let gone: i64 = redis
        .client()
        .exists(format!(
            "{}:active:{gone_sub}",
            store.options().keys().prefix()
        ))
        .await
        .unwrap();
    assert_eq!(gone, 0);
    assert!(store.list_active(gone_sub).await.unwrap().is_empty());
}

#[rstest]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_outliving_max_lifetime_and_garbage_cutoffs_are_errors_not_answers(
    #[values(Topology::Standalone, Topology::Cluster)] topology: Topology,
) {
    let redis = connect(&shared_url(topology).unwrap()).await;
    let store = store(&redis, options("errors", FailMode::Open)).await;
    let t = now_secs();
    let too_long = token("long", "gina", None, t, t + 3601);
    assert_eq!(
        store.check(&too_long).await.unwrap_err().kind(),
        ErrorKind::InvalidInput
    );
    assert_eq!(
        store.track(&too_long).await.unwrap_err().kind(),
        ErrorKind::InvalidInput
    );
    let _: () = redis
        .client()
        .set(
            format!("{}:sub:gina", store.options().keys().prefix()),
            "not-a-number",
            None,
            None,
            false,
        )
        .await
        .unwrap();
    let ok = token("ok", "gina", None, t, t + 60);
    assert_eq!(
        store.check(&ok).await.unwrap_err().kind(),
        ErrorKind::Protocol
    );
    // Not an outage: neither fail mode decided anything.
    let m = store.metrics();
    assert_eq!((m.fail_open, m.fail_closed, m.checks), (0, 0, 0));
    // A cut-off over garbage replaces it.
    assert_eq!(store.revoke_subject("gina", at_secs(t)).await.unwrap(), t);
    assert!(store.check(&ok).await.unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_store_works_behind_the_object_safe_trait() {
    let redis = connect(&shared_url(Topology::Standalone).unwrap()).await;
    let store: Arc<dyn RevocationStore> =
        Arc::new(store(&redis, options("trait", FailMode::Closed)).await);
    let t = now_secs();
    store.revoke("x", at_secs(t + 60)).await.unwrap();
    assert!(store.is_revoked("x").await.unwrap());
    store.revoke_subject("henry", at_secs(t)).await.unwrap();
    assert!(store
        .check(&token("y", "henry", None, t, t + 60))
        .await
        .unwrap());
    assert!(!store
        .check(&token("z", "henry", None, t + 1, t + 60))
        .await
        .unwrap());
}

// ---------------------------------------------------------------- fail modes

/// A private deployment whose servers the test may kill.
enum Private {
    Server(RedisServer),
    Cluster(RedisCluster),
}

impl Private {
    fn start(topology: Topology) -> Private {
        match topology {
            Topology::Cluster => {
                Private::Cluster(RedisCluster::start(ClusterOptions::default()).unwrap())
            }
            _ => Private::Server(RedisServer::start().unwrap()),
        }
    }

    fn url(&self) -> String {
        match self {
            Private::Server(s) => s.url(),
            Private::Cluster(c) => c.url(),
        }
    }

    fn kill(&mut self) {
        match self {
            Private::Server(s) => s.kill().unwrap(),
            Private::Cluster(c) => c.masters_mut().iter_mut().for_each(|m| m.kill().unwrap()),
        }
    }

    /// `CLIENT KILL TYPE pubsub` on every master: every subscriber
    /// connection drops (and reconnects).
    #[cfg_attr(not(feature = "local-cache"), allow(dead_code))]
    fn kill_subscribers(&self) {
        let servers: Vec<&RedisServer> = match self {
            Private::Server(s) => vec![s],
            Private::Cluster(c) => c.masters().iter().collect(),
        };
        for s in servers {
            s.command(&["CLIENT", "KILL", "TYPE", "pubsub"]).unwrap();
        }
    }

    /// SIGSTOP (`true`) or SIGCONT (`false`) every master.
    fn pause(&self, pause: bool) {
        let servers: Vec<&RedisServer> = match self {
            Private::Server(s) => vec![s],
            Private::Cluster(c) => c.masters().iter().collect(),
        };
        for s in servers {
            if pause {
                s.pause().unwrap();
            } else {
                s.resume().unwrap();
            }
        }
    }
}

/// A check dropped before Redis answered (a request timeout, a client gone)
/// answered nothing: it is no "check" in the counters.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_paused_server_cancelled_checks_are_not_counted_as_answered() {
    let private = Private::start(Topology::Standalone);
    let redis = connect(&private.url()).await;
    let store = store(&redis, options("cancelled", FailMode::Open)).await;
    let t = now_secs();
    let claims = token("c1", "vera", None, t, t + 600);
    assert!(!store.check(&claims).await.unwrap());
    private.pause(true);
    for _ in 0..3 {
        let dropped = tokio::time::timeout(Duration::from_millis(50), store.check(&claims)).await;
        assert!(dropped.is_err(), "a paused server answered");
        let dropped = tokio::time::timeout(Duration::from_millis(50), store.is_revoked("c1")).await;
        assert!(dropped.is_err(), "a paused server answered");
    }
    private.pause(false);
    let m = store.metrics();
    assert_eq!((m.checks, m.fail_open, m.redis_reads), (1, 0, 7));
    assert!(!store.check(&claims).await.unwrap());
    assert_eq!(store.metrics().checks, 2);
}

/// A paused (SIGSTOP) server accepts connections and never answers: checks
/// must not hang, they take the fail mode once the command timeout (1 s
/// here) passes — every one counted — and tell the truth again once it
/// resumes.
#[rstest]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_paused_server_checks_take_the_fail_mode_and_tell_the_truth_after_resume(
    #[values(Topology::Standalone, Topology::Cluster)] topology: Topology,
) {
    let private = Private::start(topology);
    let redis = connect(&private.url()).await;
    // Six timeouts in a row would open a default breaker (consecutive
    // failures), which then answers by the fail mode after the resume too:
    // this test is about each timed-out read, so that rule is off here (the
    // breaker has its own tests).
    let breaker = || {
        CircuitBreaker::builder()
            .name("revocation")
            .consecutive_failures(0)
            .build()
            .unwrap()
    };
    let open = store(
        &redis,
        options("paused_open", FailMode::Open).circuit_breaker(breaker()),
    )
    .await;
    let closed = store(
        &redis,
        options("paused_closed", FailMode::Closed).circuit_breaker(breaker()),
    )
    .await;
    let t = now_secs();
    let revoked = token("revoked", "uma", Some("o1"), t, t + 600);
    let clean = token("clean", "uma", Some("o1"), t, t + 600);
    open.revoke("revoked", at_secs(t + 600)).await.unwrap();
    closed.revoke("revoked", at_secs(t + 600)).await.unwrap();

    private.pause(true);
    // Bounded only to turn a hang into a failure (the timeout is 1 s).
    let hang_guard = Duration::from_secs(20);
    let answers = tokio::time::timeout(
        hang_guard,
        futures::future::join_all((0..3).flat_map(|_| [open.check(&revoked), open.check(&clean)])),
    )
    .await
    .expect("check hung on a paused server");
    assert!(answers.into_iter().all(|a| !a.unwrap()));
    let answers = tokio::time::timeout(
        hang_guard,
        futures::future::join_all((0..3).map(|_| closed.is_revoked("clean"))),
    )
    .await
    .expect("is_revoked hung on a paused server");
    assert!(answers.into_iter().all(|a| a.unwrap()));
    private.pause(false);

    let (o, c) = (open.metrics(), closed.metrics());
    assert_eq!((o.fail_open, o.fail_closed, o.checks), (6, 0, 6));
    assert_eq!((c.fail_open, c.fail_closed, c.checks), (0, 3, 3));
    // Resumed: the truth again (the late replies of the timed-out reads
    // must not be taken for the answers of new ones).
    for _ in 0..5 {
        assert!(open.check(&revoked).await.unwrap());
        assert!(!open.check(&clean).await.unwrap());
        assert!(!closed.is_revoked("clean").await.unwrap());
        assert!(closed.is_revoked("revoked").await.unwrap());
    }
    assert_eq!(open.metrics().fail_open, 6);
    assert_eq!(closed.metrics().fail_closed, 3);
}

#[rstest]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_killed_server_open_says_not_revoked_closed_says_revoked_and_the_breaker_takes_over(
    #[values(Topology::Standalone, Topology::Cluster)] topology: Topology,
) {
    let mut private = Private::start(topology);
    let redis = connect(&private.url()).await;
    let breaker = |name: &str| {
        CircuitBreaker::builder()
            .name(name)
            .minimum_throughput(4)
            .break_duration(Duration::from_secs(600))
            .build()
            .unwrap()
    };
    let open = store(
        &redis,
        options("fail_open", FailMode::Open).circuit_breaker(breaker("open")),
    )
    .await;
    let closed = store(
        &redis,
        options("fail_closed", FailMode::Closed).circuit_breaker(breaker("closed")),
    )
    .await;
    let t = now_secs();
    let revoked = token("revoked", "ivy", None, t, t + 600);
    let clean = token("clean", "ivy", None, t, t + 600);
    open.revoke("revoked", at_secs(t + 600)).await.unwrap();
    closed.revoke("revoked", at_secs(t + 600)).await.unwrap();
    // While the server is up both modes tell the truth.
    assert!(open.check(&revoked).await.unwrap());
    assert!(!closed.check(&clean).await.unwrap());

    private.kill();

    // Open: even a revoked token is accepted; closed: even a clean one is refused.
    let answers = futures::future::join_all((0..4).map(|_| open.check(&revoked))).await;
    assert!(answers.into_iter().all(|a| !a.unwrap()));
    let answers = futures::future::join_all((0..4).map(|_| closed.check(&clean))).await;
    assert!(answers.into_iter().all(|a| a.unwrap()));
    assert_eq!(open.breaker_state(), BreakerState::Open);
    assert_eq!(closed.breaker_state(), BreakerState::Open);

    // The breaker answers from now on: no further Redis call is made.
    let reads_open = open.metrics().redis_reads;
    let reads_closed = closed.metrics().redis_reads;
    for _ in 0..100 {
        assert!(!open.check(&revoked).await.unwrap());
        assert!(!open.is_revoked("revoked").await.unwrap());
        assert!(closed.check(&clean).await.unwrap());
        assert!(closed.is_revoked("clean").await.unwrap());
    }
    let (o, c) = (open.metrics(), closed.metrics());
    assert_eq!(
        o.redis_reads, reads_open,
        "open breaker must keep reads off Redis"
    );
    assert_eq!(
        c.redis_reads, reads_closed,
        "open breaker must keep reads off Redis"
    );
    // Every outage answer is counted, in its own mode only.
    assert_eq!((o.fail_open, o.fail_closed), (204, 0));
    assert_eq!((c.fail_open, c.fail_closed), (0, 204));
    // Writes say they failed.
    let e = open.revoke("x", at_secs(t + 600)).await.unwrap_err();
    assert!(e.is_unavailable(), "{e}");
}

// ---------------------------------------------------------------- local cache

/// An empty token id, subject or organisation is refused by every method
/// that takes one, like an empty lock name or rate-limit identity:
/// `InvalidInput`, a message saying which name is empty and what to pass,
/// nothing sent to Redis (no read counted, no key written).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn empty_names_are_refused_before_any_round_trip() {
    let redis = connect(&shared_url(Topology::Standalone).unwrap()).await;
    let p = prefix("empty_names");
    let s = store(
        &redis,
        RevocationOptions::builder(FailMode::Closed)
            .prefix(p.clone())
            .max_token_lifetime(Duration::from_secs(3600)),
    )
    .await;
    let t = now_secs();
    let exp = at_secs(t + 600);
    let is_empty = |what: &str, r: fredkit_core::Result<()>| {
        let e = r.expect_err(what);
        assert_eq!(e.kind(), ErrorKind::InvalidInput, "{what}: {e}");
        let m = e.to_string();
        assert!(m.contains("is empty") && m.contains("pass"), "{what}: {m}");
        m
    };
    let m = is_empty("revoke", s.revoke("", exp).await.map(|_| ()));
    assert!(m.contains("jti"), "{m}");
    is_empty("is_revoked", s.is_revoked("").await.map(|_| ()));
    let m = is_empty(
        "revoke_subject_now",
        s.revoke_subject_now("").await.map(|_| ()),
    );
    assert!(m.contains("sub"), "{m}");
    is_empty(
        "revoke_subject",
        s.revoke_subject("", exp).await.map(|_| ()),
    );
    let m = is_empty("revoke_org_now", s.revoke_org_now("").await.map(|_| ()));
    assert!(m.contains("org"), "{m}");
    is_empty("revoke_org", s.revoke_org("", exp).await.map(|_| ()));
    is_empty("list_active", s.list_active("").await.map(|_| ()));
    for (what, c) in [
        ("check without jti", token("", "sam", None, t, t + 600)),
        ("check without sub", token("j", "", None, t, t + 600)),
        (
            "check with an empty org",
            token("j", "sam", Some(""), t, t + 600),
        ),
    ] {
        is_empty(what, s.check(&c).await.map(|_| ()));
        is_empty(what, s.check_verdict(&c).await.map(|_| ()));
        is_empty(what, s.track(&c).await.map(|_| ()));
        is_empty(what, s.track_many(std::slice::from_ref(&c)).await);
    }
    // The object-safe trait goes through the same checks.
    let dyn_store: &dyn RevocationStore = &s;
    is_empty("trait revoke", dyn_store.revoke("", exp).await);
    let m = s.metrics();
    assert_eq!((m.redis_reads, m.checks, m.fail_closed), (0, 0, 0), "{m:?}");
    let keys: Vec<Key> = redis
        .client()
        .scan_buffered(format!("{p}:*"), Some(100), None)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .map(|k| k.unwrap())
        .collect();
    assert!(keys.is_empty(), "keys written: {keys:?}");
}

/// A cut-off key holding something that is not a number (another tool, a
/// hand edit) makes `check` fail with a `Protocol` error that names the key
/// and says what to do, instead of fred's bare "Cannot convert to number.";
/// revoking the subject again replaces the garbage.
#[rstest]
#[case::standalone(Topology::Standalone)]
#[case::cluster(Topology::Cluster)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_garbage_cut_off_is_an_error_naming_its_key(#[case] topology: Topology) {
    let redis = connect(&shared_url(topology).unwrap()).await;
    let p = prefix("garbage_cutoff");
    let s = store(
        &redis,
        RevocationOptions::builder(FailMode::Open)
            .prefix(p.clone())
            .max_token_lifetime(Duration::from_secs(3600)),
    )
    .await;
    let space = fredkit_core::KeySpace::new(p.clone()).unwrap();
    let t = now_secs();
    for (sub, org) in [("zoe", None), ("yan", Some("acme"))] {
        let key = match org {
            None => space.key(["sub", sub]),
            Some(org) => space.key(["org", org]),
        };
        let _: () = redis
            .client()
            .set(&key, "not a number", Some(Expiration::EX(600)), None, false)
            .await
            .unwrap();
        let c = token("g1", sub, org, t - 5, t + 600);
        let e = s.check(&c).await.unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Protocol, "{e}");
        let m = e.to_string();
        assert!(m.contains(&key), "the error does not name {key}: {m}");
        assert!(
            m.contains("\"not a number\"") && m.contains("revoke"),
            "the error does not say what is wrong and what to do: {m}"
        );
        assert!(!m.contains("Cannot convert"), "{m}");
        match org {
            None => s.revoke_subject_now(sub).await.unwrap(),
            Some(org) => s.revoke_org_now(org).await.unwrap(),
        };
        assert!(
            s.check(&c).await.unwrap(),
            "revoked again, the token is refused"
        );
    }
    assert_eq!(s.metrics().fail_open, 0);
}

#[cfg(feature = "local-cache")]
mod local_cache {
    use super::*;
    use fredkit_revocation::LocalCacheOptions;
    use std::time::Instant;

    /// Bounds waits that do not belong to the acceptance criteria.
    const DEADLINE: Duration = Duration::from_secs(15);

    fn cached(test: &str, mode: FailMode, ttl: Duration) -> RevocationOptionsBuilder {
        options(test, mode).local_cache(LocalCacheOptions::default().ttl(ttl))
    }

    async fn wait_for(deadline: Duration, mut f: impl FnMut() -> bool) -> bool {
        let until = Instant::now() + deadline;
        while Instant::now() < until {
            if f() {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        f()
    }

    /// Polls `store.check(claims)` until it says revoked, at most `deadline`.
    async fn revoked_within(store: &Revocations, claims: &TokenClaims, deadline: Duration) -> bool {
        let until = Instant::now() + deadline;
        loop {
            if store.check(claims).await.unwrap() {
                return true;
            }
            if Instant::now() >= until {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    #[rstest]
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn revocation_through_a_is_seen_by_b_within_a_second_without_a_round_trip(
        #[values(Topology::Standalone, Topology::Cluster)] topology: Topology,
    ) {
        let url = shared_url(topology).unwrap();
        let (redis_a, redis_b) = (connect(&url).await, connect(&url).await);
        let p = prefix("a_to_b");
        let opts = |mode| {
            RevocationOptions::builder(mode)
                .prefix(p.clone())
                .max_token_lifetime(Duration::from_secs(3600))
                .local_cache(LocalCacheOptions::default().ttl(Duration::from_secs(600)))
        };
        let a = store(&redis_a, opts(FailMode::Closed)).await;
        let b = store(&redis_b, opts(FailMode::Open)).await;
        assert!(b.has_local_cache());
        let t = now_secs();
        let by_id = token("k1", "jack", None, t - 5, t + 600);
        let by_sub = token("k2", "kate", Some("initech"), t - 5, t + 600);
        let by_org = token("k3", "liam", Some("umbrella"), t - 5, t + 600);
        for c in [&by_id, &by_sub, &by_org] {
            assert!(!b.check(c).await.unwrap());
        }
        let reads = b.metrics().redis_reads;
        assert_eq!(reads, 3);
        // Known now: answered locally.
        for c in [&by_id, &by_sub, &by_org] {
            assert!(!b.check(c).await.unwrap());
        }
        assert_eq!(b.metrics().redis_reads, reads);

        // Cut B off from Redis for commands: from now on a read would fail
        // (and B, failing open, would answer "not revoked"). Its subscriber
        // is its own connection and stays up.
        redis_b.shutdown().await.unwrap();

        a.revoke("k1", at_secs(t + 600)).await.unwrap();
        let started = Instant::now();
        assert!(
            revoked_within(&b, &by_id, Duration::from_secs(1)).await,
            "B did not see A's revocation within 1 s"
        );
        assert!(started.elapsed() < Duration::from_secs(1));
        assert!(b.is_revoked("k1").await.unwrap());

        a.revoke_subject_now("kate").await.unwrap();
        assert!(
            revoked_within(&b, &by_sub, Duration::from_secs(1)).await,
            "B did not see A's subject revocation within 1 s"
        );
        a.revoke_org_now("umbrella").await.unwrap();
        assert!(
            revoked_within(&b, &by_org, Duration::from_secs(1)).await,
            "B did not see A's organisation revocation within 1 s"
        );
        // A token B never saw, revoked through A: once its event is in, B
        // knows it from the event alone. (Asked before the event arrives, B
        // would have to read Redis: it has never seen that token.)
        //
        // The signal waited for is the exact count of events published on
        // this prefix (k1, kate, umbrella, k4), not "the count grew": the
        // count of the previous event (umbrella) may land after B already
        // answers from it, and "grew" would then be that event's count.
        a.revoke("k4", at_secs(t + 600)).await.unwrap();
        assert!(
            wait_for(Duration::from_secs(1), || b.metrics().events_received >= 4).await,
            "A's event did not reach B within 1 s: {:?}",
            b.metrics()
        );
        let unseen = token("k4", "mia", None, t, t + 600);
        assert!(
            b.check(&unseen).await.unwrap(),
            "B counted A's event for k4 but did not answer from it: {:?}",
            b.metrics()
        );

        let m = b.metrics();
        assert_eq!(m.redis_reads, reads, "B's hot path made a round trip");
        assert_eq!(m.fail_open, 0, "B's hot path tried Redis");
        assert!(m.events_received >= 4);
        assert_eq!(m.cache_flushes, 0, "B's subscription had a gap");
        assert!(m.local_answers > 0);
    }

    /// An admin service usually has no cache (it only writes): its
    /// revocations must still reach the instances that cache.
    #[rstest]
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn revocation_through_a_store_without_the_cache_reaches_cached_instances_within_a_second(
        #[values(Topology::Standalone, Topology::Cluster)] topology: Topology,
    ) {
        let url = shared_url(topology).unwrap();
        let (redis_a, redis_b) = (connect(&url).await, connect(&url).await);
        let p = prefix("uncached_a");
        let base = || {
            RevocationOptions::builder(FailMode::Open)
                .prefix(p.clone())
                .max_token_lifetime(Duration::from_secs(3600))
        };
        let a = store(&redis_a, base()).await;
        assert!(!a.has_local_cache());
        let b = store(
            &redis_b,
            base().local_cache(LocalCacheOptions::default().ttl(Duration::from_secs(600))),
        )
        .await;
        let t = now_secs();
        let by_id = token("u1", "quinn", None, t - 5, t + 600);
        let by_sub = token("u2", "rosa", None, t - 5, t + 600);
        for c in [&by_id, &by_sub] {
            assert!(!b.check(c).await.unwrap());
        }
        let reads = b.metrics().redis_reads;
        a.revoke("u1", at_secs(t + 600)).await.unwrap();
        a.revoke_subject_now("rosa").await.unwrap();
        for c in [&by_id, &by_sub] {
            assert!(
                revoked_within(&b, c, Duration::from_secs(1)).await,
                "B missed a revocation made through a store without the cache"
            );
        }
        assert_eq!(
            b.metrics().redis_reads,
            reads,
            "B's hot path made a round trip"
        );
    }

    /// Revocations through A race checks on B (cache on): once B has said
    /// "revoked" it never says "not revoked" again, and once B has received
    /// every event it says "revoked" for all, with no round trip.
    /// (The exact interleavings — a stale read landing after an event, an
    /// evicted event — are pinned down deterministically in the unit tests
    /// of `local.rs`; this one runs the real thing under load.)
    #[rstest]
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn revocations_racing_cached_checks_are_never_undone(
        #[values(Topology::Standalone, Topology::Cluster)] topology: Topology,
    ) {
        const N: usize = 200;
        let url = shared_url(topology).unwrap();
        let (redis_a, redis_b) = (connect(&url).await, connect(&url).await);
        let p = prefix("race");
        let base = || {
            RevocationOptions::builder(FailMode::Closed)
                .prefix(p.clone())
                .max_token_lifetime(Duration::from_secs(3600))
                .local_cache(LocalCacheOptions::default().ttl(Duration::from_secs(600)))
        };
        let a = store(&redis_a, base()).await;
        let b = store(&redis_b, base()).await;
        let t = now_secs();
        let tokens: Arc<Vec<TokenClaims>> = Arc::new(
            (0..N)
                .map(|i| {
                    token(
                        &format!("r{i}"),
                        &format!("s{}", i % 7),
                        None,
                        t - 5,
                        t + 600,
                    )
                })
                .collect(),
        );
        let checkers: Vec<_> = (0..4)
            .map(|w| {
                let (b, tokens) = (b.clone(), Arc::clone(&tokens));
                tokio::spawn(async move {
                    let mut seen_revoked = [false; N];
                    for round in 0..30 {
                        for i in (w..N).step_by(4) {
                            let revoked = b.check(&tokens[i]).await.unwrap();
                            assert!(
                                revoked || !seen_revoked[i],
                                "token {i} was revoked, then not (round {round})"
                            );
                            seen_revoked[i] |= revoked;
                        }
                        tokio::task::yield_now().await;
                    }
                })
            })
            .collect();
        for c in tokens.iter() {
            a.revoke(&c.jti, at_secs(c.exp)).await.unwrap();
        }
        for c in checkers {
            c.await.unwrap();
        }
        assert!(
            wait_for(DEADLINE, || b.metrics().events_received >= N as u64).await,
            "B did not receive every event"
        );
        let reads = b.metrics().redis_reads;
        for c in tokens.iter() {
            assert!(b.check(c).await.unwrap(), "{} not revoked on B", c.jti);
        }
        assert_eq!(b.metrics().redis_reads, reads, "B made a round trip");
        assert_eq!(b.metrics().fail_closed, 0);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn not_revoked_is_trusted_for_the_ttl_only() {
        let redis = connect(&shared_url(Topology::Standalone).unwrap()).await;
        let ttl = Duration::from_millis(800);
        let b = store(&redis, cached("ttl_bound", FailMode::Open, ttl)).await;
        let t = now_secs();
        let c = token("silent", "noah", None, t, t + 600);
        let read_at = Instant::now();
        assert!(!b.check(&c).await.unwrap());
        // Revoked behind the store's back: no event.
        let key = format!("{}:jti:silent", b.options().keys().prefix());
        let _: () = redis
            .client()
            .set(&key, "1", Some(Expiration::EX(600)), None, false)
            .await
            .unwrap();
        // Within the ttl B still trusts its read (proof that it answers
        // locally; skipped only if this machine stalled past the ttl)...
        let stale = b.check(&c).await.unwrap();
        if read_at.elapsed() < ttl {
            assert!(!stale);
            assert_eq!(b.metrics().redis_reads, 1);
        }
        // ...but never longer than the ttl.
        tokio::time::sleep(ttl.saturating_sub(read_at.elapsed()) + Duration::from_millis(20)).await;
        let reads = b.metrics().redis_reads;
        assert!(b.check(&c).await.unwrap());
        assert_eq!(b.metrics().redis_reads, reads + 1);
    }

    #[rstest]
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn fault_client_kill_of_the_subscriber_flushes_the_local_cache(
        #[values(Topology::Standalone, Topology::Cluster)] topology: Topology,
    ) {
        let private = Private::start(topology);
        let redis = connect(&private.url()).await;
        let b = store(
            &redis,
            cached("gap_flush", FailMode::Open, Duration::from_secs(600)),
        )
        .await;
        let t = now_secs();
        let c = token("lost", "olivia", None, t, t + 600);
        assert!(!b.check(&c).await.unwrap());
        // A revocation whose event B never gets.
        let _: () = redis
            .client()
            .set(
                format!("{}:jti:lost", b.options().keys().prefix()),
                "1",
                Some(Expiration::EX(600)),
                None,
                false,
            )
            .await
            .unwrap();
        assert!(
            !b.check(&c).await.unwrap(),
            "the ttl is long: B answers from its cache"
        );
        let reads = b.metrics().redis_reads;
        assert_eq!(b.metrics().cache_flushes, 0);

        private.kill_subscribers();
        assert!(
            wait_for(DEADLINE, || b.metrics().cache_flushes >= 1).await,
            "no flush after the subscriber reconnected"
        );
        assert!(
            b.check(&c).await.unwrap(),
            "after the gap B must read Redis again"
        );
        assert_eq!(b.metrics().redis_reads, reads + 1);
        // And events flow again after the resubscription.
        let other = token("later", "olivia", None, t, t + 600);
        assert!(!b.check(&other).await.unwrap());
        b.revoke("later", at_secs(t + 600)).await.unwrap();
        assert!(b.check(&other).await.unwrap());
    }

    /// A lag of the event receiver flushes the local cache, made
    /// deterministic: B's event task runs on a runtime of its own
    /// (`frozen`, current-thread) that the test stops driving, while B's
    /// shared subscriber (`receiver_capacity(1)`, the knob) keeps receiving
    /// on the main runtime. Meanwhile A revokes B's known-good token (that
    /// event is lost to B's lag) and ten others. Once B's task runs again it
    /// reads `Lagged`, then the last event; from then on B never answers
    /// "not revoked" for the revoked token from its cache.
    #[rstest]
    #[case::standalone(Topology::Standalone)]
    #[case::cluster(Topology::Cluster)]
    fn a_lagging_event_receiver_flushes_the_local_cache(#[case] topology: Topology) {
        use fredkit_pubsub::{Delivery, PubSubOptions, Subscriber};
        let main = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let frozen = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let url = shared_url(topology).unwrap();
        let p = prefix("lag_flush");
        let opts = || {
            RevocationOptions::builder(FailMode::Open)
                .prefix(p.clone())
                .max_token_lifetime(Duration::from_secs(3600))
                .local_cache(LocalCacheOptions::default().ttl(Duration::from_secs(600)))
                .build()
                .unwrap()
        };
        let channel = format!("{p}:events");
        let (a, redis_b, subscriber, mut watch) = main.block_on(async {
            let (redis_a, redis_b) = (connect(&url).await, connect(&url).await);
            let a = Revocations::new(&redis_a, opts()).await.unwrap();
            // Made on the main runtime: its dispatcher keeps running there.
            let subscriber = Subscriber::with_codec(
                &redis_b,
                fredkit_core::MsgPack,
                PubSubOptions::default().receiver_capacity(1),
            )
            .await
            .unwrap();
            let watch = subscriber.subscribe_bytes(&channel).await.unwrap();
            (a, redis_b, subscriber, watch)
        });
        let t = now_secs();
        let victim = token("victim", "rita", None, t, t + 600);
        // B's event task lives on `frozen`: it runs only inside block_on.
        let b = frozen.block_on(async {
            let b = Revocations::with_subscriber(&redis_b, opts(), &subscriber)
                .await
                .unwrap();
            assert!(!b.check(&victim).await.unwrap());
            assert!(!b.check(&victim).await.unwrap());
            assert_eq!(b.metrics().redis_reads, 1, "B answers from its cache");
            b
        });
        let flushes = b.metrics().cache_flushes;
        // B's event task is frozen from here on.
        main.block_on(async {
            a.revoke("victim", at_secs(t + 600)).await.unwrap();
            for n in 0..10 {
                a.revoke(&format!("flood{n}"), at_secs(t + 600))
                    .await
                    .unwrap();
            }
            // Wait until the dispatcher has handed the last event over.
            let deadline = tokio::time::Instant::now() + DEADLINE;
            loop {
                let next = tokio::time::timeout_at(deadline, watch.next())
                    .await
                    .expect("the events never arrived");
                if let Some(Delivery::Message(m)) = next {
                    let bytes = m.payload.unwrap();
                    if bytes.windows(6).any(|w| w == b"flood9") {
                        break;
                    }
                }
            }
        });
        let before = b.metrics().events_received;
        frozen.block_on(async {
            assert!(
                wait_for(DEADLINE, || b.metrics().events_received > before).await,
                "B's event task never caught up"
            );
            assert_eq!(
                b.metrics().events_received,
                before + 1,
                "B should have read exactly one event after the lag"
            );
            assert_eq!(
                b.metrics().cache_flushes,
                flushes + 1,
                "the lag must flush B's cache"
            );
            let reads = b.metrics().redis_reads;
            assert!(
                b.check(&victim).await.unwrap(),
                "B answered 'not revoked' from its cache after the lag"
            );
            assert_eq!(b.metrics().redis_reads, reads + 1);
        });
        drop(b);
        drop(frozen);
        main.block_on(async move {
            drop((a, subscriber, watch, redis_b));
        });
    }

    /// Start-up never needs Redis: a store with the local cache made while
    /// Redis is down returns (it used to fail) — before the server starts,
    /// far inside the 30 s connect timeout — and answers nothing "not
    /// revoked" from its cache; once the server is up it subscribes in the
    /// background and then knows a revocation from its event alone.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn fault_store_made_while_redis_is_down_starts_and_syncs_after_restart() {
        let mut server = RedisServer::start().unwrap();
        let url = server.url();
        server.kill().unwrap();
        let config = fredkit_conn::RedisConfig::builder()
            .url(url.clone())
            .connect_timeout(Duration::from_secs(30))
            .build()
            .unwrap();
        let redis_b = Redis::connect(config).await.unwrap();
        let p = prefix("down_at_start");
        let opts = || {
            RevocationOptions::builder(FailMode::Open)
                .prefix(p.clone())
                .max_token_lifetime(Duration::from_secs(3600))
                .local_cache(LocalCacheOptions::default().ttl(Duration::from_secs(600)))
        };
        let started = Instant::now();
        let b = tokio::time::timeout(
            Duration::from_secs(60),
            Revocations::new(&redis_b, opts().build().unwrap()),
        )
        .await
        .expect("Revocations::new hung while Redis was down")
        .expect("Revocations::new failed while Redis was down");
        let took = started.elapsed();
        assert!(!server.is_running());
        assert!(
            took < Duration::from_secs(10),
            "Revocations::new took {took:?} while Redis was down"
        );
        let t = now_secs();
        let early = token("early", "pia", None, t, t + 600);
        assert!(!b.check(&early).await.unwrap(), "fail open while down");
        assert_eq!(b.metrics().fail_open, 1);

        tokio::task::block_in_place(|| server.restart()).unwrap();
        let redis_a = connect(&url).await;
        let a = store(&redis_a, opts()).await;
        // Revoke (always the same token, so every event is about it) until
        // B has its subscription: an event counted is an event applied.
        let reads = b.metrics().redis_reads;
        let deadline = Instant::now() + DEADLINE;
        while b.metrics().events_received == 0 {
            assert!(
                Instant::now() < deadline,
                "B never subscribed: {:?}",
                b.metrics()
            );
            a.revoke("k9", at_secs(t + 600)).await.unwrap();
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // A revocation B never read is known from its event alone.
        assert!(b
            .check(&token("k9", "quin", None, t, t + 600))
            .await
            .unwrap());
        assert_eq!(b.metrics().redis_reads, reads, "B read Redis for k9");
    }
}

// ---------------------------------------------------------------- tower

#[cfg(feature = "tower")]
mod tower_layer {
    use super::*;
    use axum::body::Body;
    use axum::routing::get;
    use axum::Router;
    use fredkit_revocation::RevocationLayer;
    use http::{Request, StatusCode};
    use tower::ServiceExt;

    /// Stands in for the JWT validation layer: the (already verified)
    /// claims are in the extensions. Here they come from test headers.
    fn claims_of(parts: &http::request::Parts) -> Option<TokenClaims> {
        let h = |name: &str| {
            parts
                .headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        };
        let jti = h("x-jti")?;
        let iat: u64 = h("x-iat")?.parse().ok()?;
        Some(TokenClaims {
            jti,
            sub: h("x-sub")?,
            org: None,
            iat,
            exp: iat + 600,
        })
    }

    #[rstest]
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn axum_route_answers_401_for_revoked_tokens_only(
        #[values(Topology::Standalone, Topology::Cluster)] topology: Topology,
    ) {
        let redis = connect(&shared_url(topology).unwrap()).await;
        let store = store(&redis, options("tower", FailMode::Closed)).await;
        let t = now_secs();
        store.revoke("bad", at_secs(t + 600)).await.unwrap();
        let app = Router::new()
            .route("/me", get(|| async { "hello" }))
            .layer(RevocationLayer::new(store.clone(), claims_of));
        let request = |jti: Option<&str>| {
            let mut b = Request::builder().uri("/me");
            if let Some(jti) = jti {
                b = b
                    .header("x-jti", jti)
                    .header("x-sub", "paul")
                    .header("x-iat", t.to_string());
            }
            b.body(Body::empty()).unwrap()
        };
        let ok = app.clone().oneshot(request(Some("good"))).await.unwrap();
        assert_eq!(ok.status(), StatusCode::OK);
        let refused = app.clone().oneshot(request(Some("bad"))).await.unwrap();
        assert_eq!(refused.status(), StatusCode::UNAUTHORIZED);
        let challenge = refused.headers()["www-authenticate"].to_str().unwrap();
        assert!(challenge.contains("invalid_token"), "{challenge}");
        let anonymous = app.clone().oneshot(request(None)).await.unwrap();
        assert_eq!(anonymous.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(anonymous.headers()["www-authenticate"], "Bearer");
        store.revoke_subject("paul", at_secs(t)).await.unwrap();
        let after = app.oneshot(request(Some("good"))).await.unwrap();
        assert_eq!(after.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(store.metrics().checks, 3);
    }

    /// Fail-closed during an outage refuses the request, but the token is
    /// not known to be revoked: 503 (retry), not 401 (which tells clients
    /// to throw their token away and log the user out).
    #[rstest]
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn fault_killed_server_fail_closed_layer_answers_503_not_401(
        #[values(Topology::Standalone, Topology::Cluster)] topology: Topology,
    ) {
        let mut private = Private::start(topology);
        let redis = connect(&private.url()).await;
        let store = store(&redis, options("tower_outage", FailMode::Closed)).await;
        let t = now_secs();
        let app = Router::new()
            .route("/me", get(|| async { "hello" }))
            .layer(RevocationLayer::new(store.clone(), claims_of));
        let request = || {
            Request::builder()
                .uri("/me")
                .header("x-jti", "fine")
                .header("x-sub", "sam")
                .header("x-iat", t.to_string())
                .body(Body::empty())
                .unwrap()
        };
        assert_eq!(
            app.clone().oneshot(request()).await.unwrap().status(),
            StatusCode::OK
        );
        private.kill();
        let refused = app.oneshot(request()).await.unwrap();
        assert_eq!(refused.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert!(refused.headers().get("www-authenticate").is_none());
        assert_eq!(store.metrics().fail_closed, 1);
    }

    /// Stands in for the JWT validation middleware: inserts the (already
    /// verified) claims from the test headers into the extensions.
    async fn authenticate(
        mut req: axum::extract::Request,
        next: axum::middleware::Next,
    ) -> axum::response::Response {
        let (mut parts, body) = req.into_parts();
        if let Some(claims) = claims_of(&parts) {
            parts.extensions.insert(claims);
        }
        req = Request::from_parts(parts, body);
        next.run(req).await
    }

    fn from_extensions(parts: &http::request::Parts) -> Option<TokenClaims> {
        parts.extensions.get::<TokenClaims>().cloned()
    }

    /// The footgun of #17: in axum the last `.layer()` runs first, so a
    /// revocation layer added *after* the claims middleware runs *before*
    /// it and sees no claims. It used to let such requests through (a
    /// revoked token got 200); now it refuses them (401), and the correctly
    /// ordered stack answers 401 for the revoked token and 200 for a valid
    /// one. With `allow_requests_without_claims(true)` anonymous requests
    /// pass, and the first one logs a warning once.
    #[rstest]
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn misordered_layers_refuse_revoked_tokens_and_ordered_layers_decide_per_token(
        #[values(Topology::Standalone, Topology::Cluster)] topology: Topology,
    ) {
        let redis = connect(&shared_url(topology).unwrap()).await;
        let store = store(&redis, options("tower_order", FailMode::Open)).await;
        let t = now_secs();
        store.revoke("stolen", at_secs(t + 600)).await.unwrap();
        let request = |jti: &str| {
            Request::builder()
                .uri("/me")
                .header("x-jti", jti)
                .header("x-sub", "ann")
                .header("x-iat", t.to_string())
                .body(Body::empty())
                .unwrap()
        };
        let route = || Router::new().route("/me", get(|| async { "hello" }));
        let revocation = || RevocationLayer::new(store.clone(), from_extensions);

        // Misordered: revocation added last, so it runs first, before the
        // claims exist.
        let misordered = route()
            .layer(axum::middleware::from_fn(authenticate))
            .layer(revocation());
        for jti in ["stolen", "valid"] {
            let res = misordered.clone().oneshot(request(jti)).await.unwrap();
            assert_eq!(res.status(), StatusCode::UNAUTHORIZED, "misordered, {jti}");
        }

        // Ordered: the claims middleware (added last) runs first.
        let ordered = route()
            .layer(revocation())
            .layer(axum::middleware::from_fn(authenticate));
        let revoked = ordered.clone().oneshot(request("stolen")).await.unwrap();
        assert_eq!(revoked.status(), StatusCode::UNAUTHORIZED);
        let challenge = revoked.headers()["www-authenticate"].to_str().unwrap();
        assert!(challenge.contains("revoked"), "{challenge}");
        let valid = ordered.clone().oneshot(request("valid")).await.unwrap();
        assert_eq!(valid.status(), StatusCode::OK);
        assert_eq!(store.metrics().checks, 2, "only the ordered stack checked");
    }

    /// Opting in lets anonymous requests through and warns exactly once,
    /// however many pass (captured from the tracing output).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn allowing_requests_without_claims_passes_them_and_warns_once() {
        let logs = super::capture::Logs::install();
        let redis = connect(&shared_url(Topology::Standalone).unwrap()).await;
        let store = store(&redis, options("tower_allow", FailMode::Closed)).await;
        let app = Router::new()
            .route("/health", get(|| async { "ok" }))
            .layer(
                RevocationLayer::new(store.clone(), from_extensions)
                    .allow_requests_without_claims(true),
            );
        for _ in 0..3 {
            let req = Request::builder()
                .uri("/health")
                .body(Body::empty())
                .unwrap();
            let res = app.clone().oneshot(req).await.unwrap();
            assert_eq!(res.status(), StatusCode::OK);
        }
        let warnings = logs.lines_containing("request without claims passed the revocation layer");
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert_eq!(store.metrics().checks, 0);
    }
}
