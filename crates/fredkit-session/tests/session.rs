//! fredkit-session against real servers, standalone and a 3-master cluster:
//! concurrent requests never lose a write, counters are exact, touch slides
//! the expiry without writing data, revoke_all ends one user's sessions on
//! every instance, the tower-sessions store behaves like tower-sessions'
//! stores, bad cookies and garbage are "no session", Redis down is 503, and
//! the ACL rule suffices. One test binary; fault tests are in `faults`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::{sync::Arc, time::Duration};

use axum::{
    body::Body,
    extract::{Path, State},
    routing::get,
    Router,
};
use fred::prelude::*;
use fredkit_conn::Redis;
use fredkit_session::{
    Changes, CookieConfig, CookieProtection, ErrorKind, FailMode, Key, SaveOutcome, Session,
    SessionId, SessionLayer, SessionOptions, Sessions,
};
use fredkit_testkit::{connect, shared_url, unique_prefix, Topology};
use http::{header, Request, StatusCode};
use http_body_util::BodyExt;
use rstest::rstest;
use tokio::sync::Barrier;
use tower::ServiceExt;

async fn redis(topology: Topology) -> Redis {
    connect(&shared_url(topology).unwrap()).await.unwrap()
}

fn store(r: &Redis, prefix: &str) -> Sessions {
    Sessions::new(r, prefix, SessionOptions::new()).unwrap()
}

/// The response of one request: status, the `Set-Cookie` header, the body.
struct Reply {
    status: StatusCode,
    set_cookie: Option<String>,
    body: String,
}

impl Reply {
    /// The cookie value the response set (None when it set none or removed it).
    fn cookie(&self) -> Option<String> {
        let sc = self.set_cookie.as_deref()?;
        let first = sc.split(';').next()?;
        let (_, v) = first.split_once('=')?;
        (!v.is_empty()).then(|| v.to_owned())
    }

    fn removes_cookie(&self) -> bool {
        self.set_cookie
            .as_deref()
            .is_some_and(|c| c.starts_with("id=;") && c.contains("Max-Age=0"))
    }
}

async fn call(app: &Router, uri: &str, cookie: Option<&str>) -> Reply {
    let mut req = Request::builder().uri(uri);
    if let Some(c) = cookie {
        req = req.header(header::COOKIE, format!("other=1; id={c}"));
    }
    let res = app
        .clone()
        .oneshot(req.body(Body::empty()).unwrap())
        .await
        .unwrap();
    let status = res.status();
    let set_cookie = res
        .headers()
        .get(header::SET_COOKIE)
        .map(|v| v.to_str().unwrap().to_owned());
    let body = res.into_body().collect().await.unwrap().to_bytes();
    Reply {
        status,
        set_cookie,
        body: String::from_utf8_lossy(&body).into_owned(),
    }
}

/// The routes the tests drive through the layer.
fn app(sessions: &Sessions, cookie: CookieConfig, barrier: Arc<Barrier>) -> Router {
    Router::new()
        .route(
            "/set/{field}/{value}",
            get(
                |session: Session, Path((f, v)): Path<(String, u64)>| async move {
                    session.insert(&f, &v).unwrap();
                    "ok"
                },
            ),
        )
        .route(
            "/race/{field}/{value}",
            get(
                |State(b): State<Arc<Barrier>>,
                 session: Session,
                 Path((f, v)): Path<(String, u64)>| async move {
                    session.insert(&f, &v).unwrap();
                    // Both requests have loaded the session before either saves.
                    b.wait().await;
                    "ok"
                },
            ),
        )
        .route(
            "/incr",
            get(|session: Session| async move {
                session.increment("n", 1);
                "ok"
            }),
        )
        .route(
            "/get/{field}",
            get(|session: Session, Path(f): Path<String>| async move {
                format!("{:?}", session.get::<u64>(&f).unwrap_or(None))
            }),
        )
        .route(
            "/sign-in/{user}",
            get(|session: Session, Path(u): Path<String>| async move {
                session.sign_in(&u, Some("test device"));
                "ok"
            }),
        )
        .route(
            "/sign-out",
            get(|session: Session| async move {
                session.destroy();
                "ok"
            }),
        )
        .with_state(barrier)
        .layer(SessionLayer::new(sessions, cookie))
}

/// Acceptance: two requests of one session, started together (a barrier
/// holds both after their load), each setting a different field, 1,000
/// rounds through the real layer: both fields persist every round.
#[rstest]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_concurrent_requests_setting_different_fields_both_persist_1000_rounds(
    #[values(Topology::Standalone, Topology::Cluster)] topology: Topology,
) {
    let r = redis(topology).await;
    let sessions = store(&r, &unique_prefix("session_race"));
    let app = app(&sessions, CookieConfig::new(), Arc::new(Barrier::new(2)));
    let first = call(&app, "/set/a/0", None).await;
    let cookie = first.cookie().unwrap();
    let id = SessionId::parse(&cookie).unwrap();
    let mut lost = 0;
    for round in 1..=1000u64 {
        let (ua, ub) = (format!("/race/a/{round}"), format!("/race/b/{round}"));
        let (x, y) = tokio::join!(
            call(&app, &ua, Some(&cookie)),
            call(&app, &ub, Some(&cookie)),
        );
        assert_eq!((x.status, y.status), (StatusCode::OK, StatusCode::OK));
        let rec = sessions.load(&id).await.unwrap().unwrap();
        let (a, b) = (rec.get::<u64>("a").unwrap(), rec.get::<u64>("b").unwrap());
        if (a, b) != (Some(round), Some(round)) {
            lost += 1;
        }
    }
    assert_eq!(lost, 0, "rounds that lost a write");
}

/// Acceptance: a counter incremented by 64 concurrent requests is exactly 64.
#[rstest]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixty_four_concurrent_increments_count_exactly_64(
    #[values(Topology::Standalone, Topology::Cluster)] topology: Topology,
) {
    let r = redis(topology).await;
    let sessions = store(&r, &unique_prefix("session_incr"));
    let app = app(&sessions, CookieConfig::new(), Arc::new(Barrier::new(1)));
    let cookie = call(&app, "/set/x/1", None).await.cookie().unwrap();
    let calls = (0..64).map(|_| call(&app, "/incr", Some(&cookie)));
    for reply in futures::future::join_all(calls).await {
        assert_eq!(reply.status, StatusCode::OK);
    }
    let id = SessionId::parse(&cookie).unwrap();
    let rec = sessions.load(&id).await.unwrap().unwrap();
    assert_eq!(rec.counter("n").unwrap(), 64);
    assert_eq!(sessions.increment(&id, "n", 1).await.unwrap(), Some(65));
}

/// Per-field API: set, remove, counters, a field written by two saves ends
/// with one of the two values, and a save never resurrects a deleted session.
#[rstest]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn saves_write_only_their_fields_and_never_resurrect(
    #[values(Topology::Standalone, Topology::Cluster)] topology: Topology,
) {
    let r = redis(topology).await;
    let sessions = store(&r, &unique_prefix("session_fields"));
    let mut init = Changes::new();
    init.set("keep", "k").unwrap().set("drop", &1u8).unwrap();
    let rec = sessions.create(None, None, &init).await.unwrap();
    let id = rec.id().clone();
    let mut c = Changes::new();
    c.remove("drop").set("x", &7u32).unwrap().increment("n", 5);
    let out = sessions.save(&id, &c).await.unwrap();
    assert!(matches!(out, SaveOutcome::Saved { ref counters } if counters.get("n") == Some(&5)));
    let rec = sessions.load(&id).await.unwrap().unwrap();
    assert_eq!(rec.get::<String>("keep").unwrap().as_deref(), Some("k"));
    assert_eq!(rec.get::<u8>("drop").unwrap(), None);
    assert_eq!(rec.get::<u32>("x").unwrap(), Some(7));
    assert_eq!(rec.counter("n").unwrap(), 5);
    // Two saves of one field at once: one of the two values.
    let (p, q) = tokio::join!(sessions.set(&id, "x", &1u32), sessions.set(&id, "x", &2u32));
    p.unwrap();
    q.unwrap();
    let x = sessions
        .load(&id)
        .await
        .unwrap()
        .unwrap()
        .get::<u32>("x")
        .unwrap();
    assert!(x == Some(1) || x == Some(2), "{x:?}");
    // Deleted: a late save writes nothing and brings nothing back.
    assert!(sessions.delete(&id).await.unwrap());
    assert_eq!(
        sessions.set(&id, "x", &3u32).await.unwrap(),
        SaveOutcome::Gone
    );
    assert_eq!(sessions.increment(&id, "n", 1).await.unwrap(), None);
    let exists: i64 = r.client().exists(sessions.key(&id).unwrap()).await.unwrap();
    assert_eq!(exists, 0);
    assert!(sessions.load(&id).await.unwrap().is_none());
}

/// Acceptance: an untouched session is gone after its idle timeout while a
/// touched one lives on; the touch is a PEXPIRE only.
#[rstest]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn untouched_session_expires_touched_one_lives(
    #[values(Topology::Standalone, Topology::Cluster)] topology: Topology,
) {
    let r = redis(topology).await;
    // 2 s: long enough that a loaded machine never starves the touching
    // loop for that long; the loop ends as soon as the untouched one is gone.
    let options = SessionOptions::new().idle_timeout(Duration::from_secs(2));
    let sessions = Sessions::new(&r, unique_prefix("session_expiry"), options).unwrap();
    let untouched = sessions.create(None, None, &Changes::new()).await.unwrap();
    let mut c = Changes::new();
    c.set("v", &1u8).unwrap();
    let touched = sessions.create(None, None, &c).await.unwrap();
    let gone_key = sessions.key(untouched.id()).unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        assert!(sessions.load(touched.id()).await.unwrap().is_some());
        let exists: i64 = r.client().exists(gone_key.as_str()).await.unwrap();
        if exists == 0 {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "never expired");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(sessions.load(untouched.id()).await.unwrap().is_none());
    let rec = sessions.load(touched.id()).await.unwrap().unwrap();
    assert_eq!(rec.get::<u8>("v").unwrap(), Some(1));
}

fn commandstat(info: &str, cmd: &str) -> u64 {
    info.lines()
        .find_map(|l| l.strip_prefix(&format!("cmdstat_{cmd}:calls=")))
        .and_then(|rest| rest.split(',').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

/// Acceptance: a request that only reads the session issues no write of the
/// data (INFO commandstats on a private server: no HSET/HDEL/HINCRBY), only
/// the PEXPIRE of the touch — and no save round trip at all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn touch_writes_no_data() {
    let server = fredkit_testkit::RedisServer::start().unwrap();
    let r = connect(&server.url()).await.unwrap();
    let sessions = store(&r, "session:touch");
    let app = app(&sessions, CookieConfig::new(), Arc::new(Barrier::new(1)));
    let cookie = call(&app, "/set/a/5", None).await.cookie().unwrap();
    let info = |r: Redis| async move {
        r.client()
            .info::<String>(Some(fred::types::InfoKind::CommandStats))
            .await
            .unwrap()
    };
    let before = info(r.clone()).await;
    for _ in 0..20 {
        let reply = call(&app, "/get/a", Some(&cookie)).await;
        assert_eq!(reply.body, "Some(5)");
        assert_eq!(reply.set_cookie, None);
    }
    let after = info(r.clone()).await;
    for cmd in ["hset", "hdel", "hincrby", "set", "del", "unlink"] {
        assert_eq!(
            commandstat(&after, cmd),
            commandstat(&before, cmd),
            "{cmd} was called by a read-only request"
        );
    }
    // The counting sees every command: exactly one PEXPIRE per request.
    assert_eq!(
        commandstat(&after, "pexpire") - commandstat(&before, "pexpire"),
        20
    );
    // One pipelined HGETALL per request (no script, no save round trip).
    assert_eq!(
        commandstat(&after, "hgetall") - commandstat(&before, "hgetall"),
        20
    );
    assert_eq!(
        commandstat(&after, "evalsha"),
        commandstat(&before, "evalsha")
    );
}

/// Acceptance: revoke_all(user) on one instance ends all of the user's
/// sessions for every instance, leaves other users' (on another slot) and
/// anonymous sessions alone; a later sign-in lives; the index is bounded.
#[rstest]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoke_all_ends_one_users_sessions_everywhere_and_no_other(
    #[values(Topology::Standalone, Topology::Cluster)] topology: Topology,
) {
    let prefix = unique_prefix("session_revoke");
    let options = SessionOptions::new().max_sessions_per_user(3);
    let one = Sessions::new(&redis(topology).await, prefix.as_str(), options.clone()).unwrap();
    let two = Sessions::new(&redis(topology).await, prefix.as_str(), options).unwrap();
    let (alice, bob) = ("alice@example.com", "bob@example.com");
    let mut alices = Vec::new();
    for (i, s) in [&one, &two, &one].into_iter().enumerate() {
        let anon = s.create(None, None, &Changes::new()).await.unwrap();
        let signed = s
            .cycle_id(&anon, Some(alice), Some(&format!("device {i}")))
            .await
            .unwrap();
        assert!(
            s.load(anon.id()).await.unwrap().is_none(),
            "old id still alive"
        );
        assert_eq!(signed.user(), Some(alice));
        alices.push(signed);
    }
    let bobs = [
        two.create(Some(bob), Some("phone"), &Changes::new())
            .await
            .unwrap(),
        one.create(Some(bob), None, &Changes::new()).await.unwrap(),
    ];
    let anon = two.create(None, None, &Changes::new()).await.unwrap();
    if topology == Topology::Cluster {
        let slot = |k: String| fredkit_testkit::key_slot(k.as_bytes());
        assert_ne!(
            slot(one.key(alices[0].id()).unwrap()),
            slot(one.key(bobs[0].id()).unwrap()),
            "pick users on different slots"
        );
    }
    let listed = two.sessions_of(alice).await.unwrap();
    assert_eq!(listed.len(), 3);
    assert!(listed
        .iter()
        .any(|s| s.device.as_deref() == Some("device 2")));
    // The index keeps the newest 3.
    let extra = one
        .create(Some(alice), None, &Changes::new())
        .await
        .unwrap();
    assert_eq!(one.sessions_of(alice).await.unwrap().len(), 3);

    one.revoke_all(alice).await.unwrap();
    for s in [&one, &two] {
        for a in alices.iter().chain([&extra]) {
            assert!(
                s.load(a.id()).await.unwrap().is_none(),
                "alice's session survived"
            );
        }
        for b in &bobs {
            assert!(
                s.load(b.id()).await.unwrap().is_some(),
                "bob's session was ended"
            );
        }
        assert!(s.load(anon.id()).await.unwrap().is_some());
    }
    assert_eq!(
        two.set(alices[1].id(), "x", &1u8).await.unwrap(),
        SaveOutcome::Gone
    );
    assert!(two.sessions_of(alice).await.unwrap().is_empty());
    assert_eq!(one.sessions_of(bob).await.unwrap().len(), 2);
    // Signing in again after the revocation works.
    tokio::time::sleep(Duration::from_millis(5)).await;
    let again = two
        .create(Some(alice), None, &Changes::new())
        .await
        .unwrap();
    assert!(one.load(again.id()).await.unwrap().is_some());
    // Sign out one device.
    let handle = bobs[0].id().handle();
    assert!(one.revoke(bob, &handle).await.unwrap());
    assert!(two.load(bobs[0].id()).await.unwrap().is_none());
    assert!(two.load(bobs[1].id()).await.unwrap().is_some());
}

/// Sign-in through the layer: a new id (the old one is dead), the data kept,
/// the cookie HttpOnly, Secure, SameSite=Lax; sign-out removes it.
#[rstest]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sign_in_rotates_the_id_and_sign_out_ends_it(
    #[values(Topology::Standalone, Topology::Cluster)] topology: Topology,
) {
    let r = redis(topology).await;
    let sessions = store(&r, &unique_prefix("session_sign_in"));
    let app = app(&sessions, CookieConfig::new(), Arc::new(Barrier::new(1)));
    let first = call(&app, "/set/cart/3", None).await;
    let sc = first.set_cookie.clone().unwrap();
    for attr in ["HttpOnly", "Secure", "SameSite=Lax", "Path=/"] {
        assert!(sc.contains(attr), "{sc}");
    }
    let anon = first.cookie().unwrap();
    let signed = call(&app, "/sign-in/carol", Some(&anon))
        .await
        .cookie()
        .unwrap();
    assert_ne!(anon, signed);
    assert_eq!(call(&app, "/get/cart", Some(&signed)).await.body, "Some(3)");
    // The old id is no session any more (and its cookie is removed).
    let old = call(&app, "/get/cart", Some(&anon)).await;
    assert_eq!(old.body, "None");
    assert!(old.removes_cookie(), "{:?}", old.set_cookie);
    assert_eq!(sessions.sessions_of("carol").await.unwrap().len(), 1);
    let out = call(&app, "/sign-out", Some(&signed)).await;
    assert!(out.removes_cookie());
    assert_eq!(call(&app, "/get/cart", Some(&signed)).await.body, "None");
}

/// Bad input: tampered, unsigned, foreign and unknown cookies are "no
/// session" (200, a fresh session when the handler writes, the bad cookie
/// removed); garbage under a session key is "no session" and removed; no
/// warning holds the id.
#[rstest]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_cookies_and_garbage_are_no_session(
    #[values(Topology::Standalone, Topology::Cluster)] topology: Topology,
) {
    let logs = fredkit_testkit::capture::Logs::install();
    let r = redis(topology).await;
    let sessions = store(&r, &unique_prefix("session_garbage"));
    let key = Key::generate();
    let signed_cfg = CookieConfig::new().protection(CookieProtection::Signed(key.clone()));
    let private_cfg = CookieConfig::new().protection(CookieProtection::Private(key));
    for cfg in [CookieConfig::new(), signed_cfg, private_cfg] {
        let app = app(&sessions, cfg, Arc::new(Barrier::new(1)));
        let good = call(&app, "/set/a/1", None).await.cookie().unwrap();
        assert_eq!(call(&app, "/get/a", Some(&good)).await.body, "Some(1)");
        let mut tampered = good.clone();
        let last = tampered.pop().unwrap();
        tampered.push(if last == 'A' { 'B' } else { 'A' });
        let unknown = SessionId::new_anonymous().expose_secret();
        for bad in [tampered.as_str(), "garbage", "", &unknown, "a.b.c"] {
            let reply = call(&app, "/get/a", Some(bad)).await;
            assert_eq!(
                (reply.status, reply.body.as_str()),
                (StatusCode::OK, "None"),
                "{bad}"
            );
            let fresh = call(&app, "/set/a/2", Some(bad)).await;
            assert_eq!(fresh.status, StatusCode::OK);
            let fresh = fresh.cookie().unwrap();
            assert_ne!(fresh, good);
            assert_eq!(call(&app, "/get/a", Some(&fresh)).await.body, "Some(2)");
        }
    }
    // Garbage under a session key: a string, then a hash without metadata.
    let rec = sessions.create(None, None, &Changes::new()).await.unwrap();
    let k = sessions.key(rec.id()).unwrap();
    let () = r
        .client()
        .set(k.as_str(), "junk", None, None, false)
        .await
        .unwrap();
    assert!(sessions.load(rec.id()).await.unwrap().is_none());
    let exists: i64 = r.client().exists(k.as_str()).await.unwrap();
    assert_eq!(exists, 0, "garbage was not removed");
    let () = r.client().hset(k.as_str(), ("x", "y")).await.unwrap();
    assert!(sessions.load(rec.id()).await.unwrap().is_none());
    let exists: i64 = r.client().exists(k.as_str()).await.unwrap();
    assert_eq!(exists, 0, "a hash without metadata was not removed");
    let () = r
        .client()
        .set(k.as_str(), "junk", None, None, false)
        .await
        .unwrap();
    assert_eq!(
        sessions.set(rec.id(), "a", &1u8).await.unwrap(),
        SaveOutcome::Gone
    );
    // Ids never in Debug output or warnings.
    let secret = rec.id().expose_secret();
    assert!(!format!("{:?} {:?}", rec, rec.id()).contains(&secret));
    assert!(!logs.text().contains(&secret));
    assert!(
        !logs.warnings().is_empty(),
        "garbage removal is warned about"
    );
}

/// The ACL rule suffices for every operation; another prefix is refused
/// with ErrorKind::Permission.
#[rstest]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn least_privilege_rule_suffices_and_other_prefixes_are_refused(
    #[values(Topology::Standalone, Topology::Cluster)] topology: Topology,
) {
    use fredkit_testkit::{acl_denials, set_acl_user, url_as};
    let prefix = unique_prefix("session_acl");
    let keys = fredkit_session::KeySpace::new(prefix.as_str()).unwrap();
    let user = format!("session-{}", rand_suffix());
    set_acl_user(topology, &user, "pw", &fredkit_session::acl_rule(&keys)).unwrap();
    let limited = connect(&url_as(topology, &user, "pw").unwrap())
        .await
        .unwrap();
    let sessions = Sessions::new(&limited, &keys, SessionOptions::new()).unwrap();
    let mut c = Changes::new();
    c.set("a", &1u8).unwrap().increment("n", 1);
    let rec = sessions.create(None, None, &c).await.unwrap();
    sessions.load(rec.id()).await.unwrap().unwrap();
    sessions.save(rec.id(), &c).await.unwrap();
    let signed = sessions
        .cycle_id(&rec, Some("dora"), Some("d"))
        .await
        .unwrap();
    assert_eq!(sessions.sessions_of("dora").await.unwrap().len(), 1);
    assert!(sessions
        .revoke("dora", &signed.id().handle())
        .await
        .unwrap());
    let again = sessions.create(Some("dora"), None, &c).await.unwrap();
    sessions.revoke_all("dora").await.unwrap();
    assert!(sessions.load(again.id()).await.unwrap().is_none());
    sessions.delete(rec.id()).await.unwrap();
    // The tower-sessions store under the same rule.
    let ts = fredkit_session::TowerSessionStore::new(&limited, &keys).unwrap();
    tower_sessions_conformance(&ts).await;
    assert_eq!(acl_denials(topology, &user).unwrap(), Vec::<String>::new());

    let elsewhere = Sessions::new(
        &limited,
        unique_prefix("session_acl_other"),
        SessionOptions::new(),
    )
    .unwrap();
    let e = elsewhere.create(None, None, &c).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Permission, "{e}");
    let e = elsewhere.load(rec.id()).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Permission, "{e}");
    let e = elsewhere.save(rec.id(), &c).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Permission, "{e}");
}

fn rand_suffix() -> String {
    use rand::Rng;
    format!("{:08x}", rand::thread_rng().gen::<u32>())
}

/// The behaviours tower-sessions' own store tests check: create, save, load,
/// delete, expiry, id collision on create; plus save writes only changes
/// and never recreates a deleted record.
async fn tower_sessions_conformance(store: &fredkit_session::TowerSessionStore) {
    use time::OffsetDateTime;
    use tower_sessions_core::{
        session::{Id, Record},
        SessionStore,
    };
    let later = OffsetDateTime::now_utc() + time::Duration::hours(1);
    let mut record = Record {
        id: Id::default(),
        data: [("user".to_owned(), serde_json::json!({"id": 42}))].into(),
        expiry_date: later,
    };
    // create + load round-trip the record exactly.
    store.create(&mut record).await.unwrap();
    let loaded = store.load(&record.id).await.unwrap().unwrap();
    assert_eq!(loaded, record);
    // Id collision on create: a new id, the first record untouched.
    let mut clash = Record {
        id: record.id,
        data: [("other".to_owned(), serde_json::json!(1))].into(),
        expiry_date: later,
    };
    store.create(&mut clash).await.unwrap();
    assert_ne!(clash.id, record.id);
    assert_eq!(store.load(&record.id).await.unwrap().unwrap(), record);
    assert_eq!(store.load(&clash.id).await.unwrap().unwrap(), clash);
    // save: a changed entry, a removed entry, a new expiry.
    record.data.insert("cart".into(), serde_json::json!([1, 2]));
    record.data.remove("user");
    record.expiry_date = later + time::Duration::minutes(5);
    store.save(&record).await.unwrap();
    assert_eq!(store.load(&record.id).await.unwrap().unwrap(), record);
    // delete, and a save after it does not recreate the record.
    store.delete(&record.id).await.unwrap();
    assert_eq!(store.load(&record.id).await.unwrap(), None);
    store.save(&record).await.unwrap();
    assert_eq!(store.load(&record.id).await.unwrap(), None);
    // expiry: a record whose expiry has passed is not loaded.
    let mut expired = Record {
        id: Id::default(),
        data: Default::default(),
        expiry_date: OffsetDateTime::now_utc() - time::Duration::seconds(1),
    };
    store.create(&mut expired).await.unwrap();
    assert_eq!(store.load(&expired.id).await.unwrap(), None);
    let mut short = Record {
        id: Id::default(),
        data: Default::default(),
        expiry_date: OffsetDateTime::now_utc() + time::Duration::milliseconds(300),
    };
    store.create(&mut short).await.unwrap();
    assert!(store.load(&short.id).await.unwrap().is_some());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while store.load(&short.id).await.unwrap().is_some() {
        assert!(tokio::time::Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    store.delete(&clash.id).await.unwrap();
}

/// Acceptance: the tower-sessions store passes the conformance behaviours;
/// garbage under a record key is no record and removed; a save that changes
/// nothing writes nothing.
#[rstest]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tower_sessions_store_conforms(
    #[values(Topology::Standalone, Topology::Cluster)] topology: Topology,
) {
    use tower_sessions_core::{
        session::{Id, Record},
        SessionStore,
    };
    let r = redis(topology).await;
    let store =
        fredkit_session::TowerSessionStore::new(&r, unique_prefix("session_tower")).unwrap();
    tower_sessions_conformance(&store).await;
    let id = Id::default();
    let key = store.key(&id).unwrap();
    let () = r
        .client()
        .set(key.as_str(), "junk", None, None, false)
        .await
        .unwrap();
    assert_eq!(store.load(&id).await.unwrap(), None);
    let exists: i64 = r.client().exists(key.as_str()).await.unwrap();
    assert_eq!(exists, 0);
    // Unchanged save: the stored hash is not rewritten (a marker field
    // written behind the store's back survives; a whole-record SET would
    // drop it).
    let mut rec = Record {
        id,
        data: [("a".to_owned(), serde_json::json!(1))].into(),
        expiry_date: time::OffsetDateTime::now_utc() + time::Duration::hours(1),
    };
    store.create(&mut rec).await.unwrap();
    let key = store.key(&rec.id).unwrap();
    let () = r
        .client()
        .hset(key.as_str(), ("marker", "1"))
        .await
        .unwrap();
    store.save(&rec).await.unwrap();
    let marker: Option<String> = r.client().hget(key.as_str(), "marker").await.unwrap();
    assert_eq!(marker.as_deref(), Some("1"));
    store.delete(&rec.id).await.unwrap();
}

mod faults {
    use super::*;

    /// Acceptance: Redis down → 503 by default (the handler never runs);
    /// with FailMode::Open the request is served without a session.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn fault_redis_down_answers_503_by_default() {
        let mut server = fredkit_testkit::RedisServer::start().unwrap();
        let config = fredkit_conn::RedisConfig::builder()
            .url(server.url())
            .command_timeout(Duration::from_millis(300))
            .build()
            .unwrap();
        let r = Redis::connect(config).await.unwrap();
        let sessions = store(&r, "session:down");
        let closed = app(&sessions, CookieConfig::new(), Arc::new(Barrier::new(1)));
        let open = Router::new()
            .route(
                "/get",
                get(|session: Session| async move { format!("open {}", session.exists()) }),
            )
            .layer(SessionLayer::new(&sessions, CookieConfig::new()).fail_mode(FailMode::Open));
        let cookie = call(&closed, "/set/a/1", None).await.cookie().unwrap();
        assert_eq!(call(&closed, "/get/a", Some(&cookie)).await.body, "Some(1)");
        server.kill().unwrap();
        let down = call(&closed, "/get/a", Some(&cookie)).await;
        assert_eq!(down.status, StatusCode::SERVICE_UNAVAILABLE);
        // A new visitor's write cannot be saved: 503 too.
        let down = call(&closed, "/set/a/1", None).await;
        assert_eq!(down.status, StatusCode::SERVICE_UNAVAILABLE);
        let served = call(&open, "/get", Some(&cookie)).await;
        assert_eq!(
            (served.status, served.body.as_str()),
            (StatusCode::OK, "open false")
        );
        // The cookie may name a live session: it is kept, not removed.
        assert_eq!(served.set_cookie, None);
    }
}
