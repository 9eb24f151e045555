//! `session`: one web request's session work, load a 1 KB session (16
//! fields) and save it with one field changed, at concurrency 1 and 64 over
//! 4096 sessions: fredkit-session against **tower-sessions-redis-store** 0.16
//! (on fred, here our vendored fred 10.1; driven through tower-sessions'
//! own `Session` the way its middleware does: load on first read, `insert`,
//! `save` of the whole record) and against raw fred `HGETALL` + `HSET`,
//! rounds interleaved.
//!
//! Then the lost-writes race: two requests of one session, started together
//! (a barrier), each set a different field; after both, are both fields
//! there? `lost_writes_peer` (tower-sessions' store, which rewrites the whole
//! record) and `lost_writes` (fredkit-session, per-field writes; must be 0)
//! count the rounds that lost one.

use super::Suite;
use crate::commandstats;
use crate::harness::{interleave, measure, op, Contender, Load, Report, Summary, Unit};
use crate::Ctx;
use anyhow::{anyhow, bail, Result};
use fred::prelude::*;
use fredkit_session::{
    Changes, SaveOutcome, SessionId, SessionOptions, Sessions, TowerSessionStore,
};
use futures::future::BoxFuture;
use std::collections::HashMap;
use std::sync::Arc;
use tokio::sync::Barrier;
use tower_sessions_core::session::{Id, Session};
use tower_sessions_core::Expiry;
use tower_sessions_redis_store::RedisStore;

/// The `session` suite.
pub(crate) struct SessionSuite;

impl Suite for SessionSuite {
    fn name(&self) -> &'static str {
        "session"
    }

    fn about(&self) -> &'static str {
        "load + save of a 1 KB session with one changed field: fredkit-session vs tower-sessions-redis-store vs raw HGETALL + HSET; lost writes of two concurrent requests"
    }

    fn run<'a>(&'a self, ctx: &'a Ctx, report: &'a mut Report) -> BoxFuture<'a, Result<()>> {
        Box::pin(run(ctx, report))
    }
}

const CONCURRENCIES: [usize; 2] = [1, 64];
/// Sessions cycled through (each contender its own).
const SESSIONS: u64 = 4096;
/// Fields of a session; with [`VALUE_LEN`] about 1 KB of data.
const FIELDS: usize = 16;
/// Bytes of each field's value.
const VALUE_LEN: usize = 56;

fn field(i: usize) -> String {
    format!("field{i:02}")
}

/// The i-th value of a field: `VALUE_LEN` bytes, different per `i`.
fn value(i: u64) -> String {
    let mut s = format!("v{i:016x}");
    while s.len() < VALUE_LEN {
        s.push('.');
    }
    s
}

fn peer_expiry() -> Option<Expiry> {
    Some(Expiry::OnInactivity(time::Duration::minutes(30)))
}

/// Creates one session through tower-sessions with the 16 fields; its id.
async fn peer_create(store: &Arc<RedisStore<Client>>, seed: u64) -> Result<Id> {
    let s = Session::new(None, Arc::clone(store), peer_expiry());
    for f in 0..FIELDS {
        s.insert(&field(f), value(seed + f as u64)).await?;
    }
    s.save().await?;
    s.id()
        .ok_or_else(|| anyhow!("tower-sessions gave the saved session no id"))
}

/// The request: load (first read), change one field, save.
async fn peer_request(
    store: &Arc<RedisStore<Client>>,
    id: Id,
    field_name: &str,
    v: String,
) -> Result<()> {
    let s = Session::new(Some(id), Arc::clone(store), peer_expiry());
    let user: Option<String> = s.get(&field(0)).await?;
    if user.is_none() {
        bail!("tower-sessions: session lost its first field");
    }
    s.insert(field_name, v).await?;
    s.save().await?;
    Ok(())
}

/// Creates one session through fredkit-session with the 16 fields; its id.
async fn ours_create(sessions: &Sessions, seed: u64) -> Result<SessionId> {
    let mut changes = Changes::new();
    for f in 0..FIELDS {
        changes.set(&field(f), &value(seed + f as u64))?;
    }
    let record = sessions.create(None, None, &changes).await?;
    Ok(record.id().clone())
}

/// The request: load (one script, slides the expiry), read a field, save
/// the one changed field (one script).
async fn ours_request(
    sessions: &Sessions,
    id: &SessionId,
    field_name: &str,
    v: String,
) -> Result<()> {
    let Some(record) = sessions.load(id).await? else {
        bail!("fredkit-session: session gone");
    };
    let user: Option<String> = record.get(&field(0))?;
    if user.is_none() {
        bail!("fredkit-session: session lost its first field");
    }
    let mut changes = Changes::new();
    changes.set(field_name, &v)?;
    match sessions.save(id, &changes).await? {
        SaveOutcome::Saved { .. } => Ok(()),
        other => bail!("fredkit-session: save answered {other:?}"),
    }
}

type OurStore = TowerSessionStore;

fn ours_tower_expiry() -> Option<tower_sessions_core_015::Expiry> {
    Some(tower_sessions_core_015::Expiry::OnInactivity(
        time::Duration::minutes(30),
    ))
}

/// Creates one session through tower-sessions 0.15 on fredkit-session's
/// `TowerSessionStore` with the 16 fields; its id.
async fn ts_create(
    store: &Arc<OurStore>,
    seed: u64,
) -> Result<tower_sessions_core_015::session::Id> {
    let s = tower_sessions_core_015::Session::new(None, Arc::clone(store), ours_tower_expiry());
    for f in 0..FIELDS {
        s.insert(&field(f), value(seed + f as u64)).await?;
    }
    s.save().await?;
    s.id()
        .ok_or_else(|| anyhow!("tower-sessions gave the saved session no id"))
}

/// The same request as [`peer_request`], on fredkit-session's store.
async fn ts_request(
    store: &Arc<OurStore>,
    id: tower_sessions_core_015::session::Id,
    field_name: &str,
    v: String,
) -> Result<()> {
    let s = tower_sessions_core_015::Session::new(Some(id), Arc::clone(store), ours_tower_expiry());
    let user: Option<String> = s.get(&field(0)).await?;
    if user.is_none() {
        bail!("TowerSessionStore: session lost its first field");
    }
    s.insert(field_name, v).await?;
    s.save().await?;
    Ok(())
}

fn raw_key(n: u64) -> String {
    format!("bench:session:raw:{n}")
}

/// Counts the rounds in which one of two concurrent requests' writes is gone.
/// `create` makes a session and returns its handle; `request(handle, field,
/// value)` is one request; `read(handle, field)` the field's stored value.
async fn race<H, C, CF, Q, QF, R, RF>(rounds: u64, create: C, request: Q, read: R) -> Result<u64>
where
    H: Clone + Send + Sync + 'static,
    C: Fn(u64) -> CF,
    CF: std::future::Future<Output = Result<H>>,
    Q: Fn(H, &'static str, String) -> QF + Clone + Send + Sync + 'static,
    QF: std::future::Future<Output = Result<()>> + Send + 'static,
    R: Fn(H, &'static str) -> RF,
    RF: std::future::Future<Output = Result<Option<String>>>,
{
    let mut lost = 0;
    for r in 0..rounds {
        let h = create(r).await?;
        let barrier = Arc::new(Barrier::new(2));
        let mut tasks = Vec::new();
        for (name, v) in [("race_a", value(r)), ("race_b", value(r + 1))] {
            let (h, barrier, request) = (h.clone(), Arc::clone(&barrier), request.clone());
            tasks.push(tokio::spawn(async move {
                barrier.wait().await;
                request(h, name, v).await
            }));
        }
        for t in tasks {
            t.await??;
        }
        let a = read(h.clone(), "race_a").await?;
        let b = read(h, "race_b").await?;
        if a.as_deref() != Some(value(r).as_str()) || b.as_deref() != Some(value(r + 1).as_str()) {
            lost += 1;
        }
    }
    Ok(lost)
}

async fn run(ctx: &Ctx, report: &mut Report) -> Result<()> {
    let raw = ctx.fred_client().await?;
    let peer_client = ctx.fred_client().await?;
    let store = Arc::new(RedisStore::new(peer_client));
    let ours_redis = ctx.redis().await?;
    let sessions = Sessions::new(
        &ours_redis,
        format!("bench:session:{}", std::process::id()).as_str(),
        SessionOptions::new(),
    )?;

    // Sessions of each side, the same data.
    let mut peer_ids = Vec::with_capacity(SESSIONS as usize);
    let mut our_ids = Vec::with_capacity(SESSIONS as usize);
    let ts_redis = ctx.redis().await?;
    let ts_store = Arc::new(TowerSessionStore::new(
        &ts_redis,
        format!("bench:tsstore:{}", std::process::id()).as_str(),
    )?);
    let mut ts_ids = Vec::with_capacity(SESSIONS as usize);
    for n in 0..SESSIONS {
        ts_ids.push(ts_create(&ts_store, n).await?);
        peer_ids.push(peer_create(&store, n).await?);
        our_ids.push(ours_create(&sessions, n).await?);
        let fields: Vec<(String, String)> = (0..FIELDS)
            .map(|f| (field(f), value(n + f as u64)))
            .collect();
        let _: () = raw.hset(raw_key(n), fields).await?;
    }
    let peer_ids = Arc::new(peer_ids);
    let our_ids = Arc::new(our_ids);
    let ts_ids = Arc::new(ts_ids);

    for concurrency in CONCURRENCIES {
        let raw_c = {
            let c = raw.clone();
            Contender::new(
                "raw hgetall+hset",
                concurrency,
                op(move |i| {
                    let c = c.clone();
                    async move {
                        let key = raw_key(i % SESSIONS);
                        let data: HashMap<String, String> = c.hgetall(&key).await?;
                        if data.len() != FIELDS {
                            bail!("{key} has {} fields", data.len());
                        }
                        let _: i64 = c.hset(&key, (field(1), value(i))).await?;
                        Ok(())
                    }
                }),
            )
        };
        let peer = {
            let (store, ids) = (Arc::clone(&store), Arc::clone(&peer_ids));
            Contender::new(
                "tower-sessions",
                concurrency,
                op(move |i| {
                    let (store, ids) = (Arc::clone(&store), Arc::clone(&ids));
                    async move {
                        let id = ids[(i % SESSIONS) as usize];
                        peer_request(&store, id, &field(1), value(i)).await
                    }
                }),
            )
        };
        let ours = {
            let (sessions, ids) = (sessions.clone(), Arc::clone(&our_ids));
            Contender::new(
                "fredkit-session",
                concurrency,
                op(move |i| {
                    let (sessions, ids) = (sessions.clone(), Arc::clone(&ids));
                    async move {
                        let id = &ids[(i % SESSIONS) as usize];
                        ours_request(&sessions, id, &field(1), value(i)).await
                    }
                }),
            )
        };
        let ts = {
            let (store, ids) = (Arc::clone(&ts_store), Arc::clone(&ts_ids));
            Contender::new(
                "fredkit TowerSessionStore",
                concurrency,
                op(move |i| {
                    let (store, ids) = (Arc::clone(&store), Arc::clone(&ids));
                    async move {
                        let id = ids[(i % SESSIONS) as usize];
                        ts_request(&store, id, &field(1), value(i)).await
                    }
                }),
            )
        };
        let contenders = vec![ours, raw_c, peer, ts];
        if concurrency == 64 {
            // What one request costs the server: commands (INFO
            // commandstats) and redis-server CPU (INFO cpu), 64 tasks.
            let n = ctx.pick(20_000u64, 5_000);
            for (c, name) in
                contenders
                    .iter()
                    .zip(["fredkit", "raw", "tower_sessions_redis", "tower_store"])
            {
                let before = commandstats::snapshot(&raw).await?;
                let cpu0 = commandstats::process_cpu_us();
                measure(c.concurrency, Load::Ops(n), std::sync::Arc::clone(&c.op)).await?;
                let cpu1 = commandstats::process_cpu_us();
                let d = commandstats::snapshot(&raw).await?.since(&before);
                if let (Some(a), Some(b)) = (cpu0, cpu1) {
                    report.add(
                        &format!("client_cpu_us_per_request.{name}"),
                        b.saturating_sub(a) as f64 / n as f64,
                        Unit::Decimal,
                        format!("{}: the bench process's CPU µs per load + save (/proc/self/stat, 10 ms resolution)", c.name),
                    );
                }
                report.add(
                    &format!("redis_cmds_per_request.{name}"),
                    d.total() as f64 / n as f64,
                    Unit::Decimal,
                    format!(
                        "{}: commands the server ran per load + save (script calls included)",
                        c.name
                    ),
                );
                report.add(
                    &format!("server_cpu_us_per_request.{name}"),
                    d.server_cpu_us() as f64 / n as f64,
                    Unit::Decimal,
                    format!(
                        "{}: redis-server CPU µs per load + save (INFO cpu), {n} requests at c64",
                        c.name
                    ),
                );
                println!("   {} per request: {}", c.name, d.per(n));
            }
        }
        let s = interleave(ctx.rounds() + 2, ctx.load(), &contenders).await?;
        let find = |name: &str| -> Result<&Summary> {
            s.iter()
                .find(|x| x.name == name)
                .ok_or_else(|| anyhow!("no summary for {name}"))
        };
        let (ours_s, raw_s, peer_s, ts_s) = (
            find("fredkit-session")?,
            find("raw hgetall+hset")?,
            find("tower-sessions")?,
            find("fredkit TowerSessionStore")?,
        );
        report.summary(
            &format!("tower_store_load_save.{}", format_args!("c{concurrency}")),
            ts_s,
            &format!("tower-sessions 0.15 Session over fredkit-session's TowerSessionStore (1 script each for load and save, only the changed entry written), {concurrency} tasks"),
        );
        report.ratio(
            &format!("tower_store_vs_tower_sessions_redis.c{concurrency}"),
            ts_s.ratio_to(peer_s),
            "fredkit-session's TowerSessionStore / tower-sessions-redis-store, both under tower-sessions' Session: the one-line switch",
        );
        let c = format!("c{concurrency}");
        report.summary(
            &format!("load_save.{c}"),
            ours_s,
            &format!("fredkit-session: Sessions::load + Sessions::save of one changed field, {concurrency} tasks"),
        );
        report.ratio(
            &format!("load_save_vs_tower_sessions_redis.{c}"),
            ours_s.ratio_to(peer_s),
            "fredkit-session / tower-sessions-redis-store (goal >= 1.3)",
        );
        report.ratio(
            &format!("load_save_vs_raw.{c}"),
            ours_s.ratio_to(raw_s),
            "fredkit-session / raw HGETALL + HSET (goal >= 0.90)",
        );
        if concurrency == 64 {
            report.ratio(
                "load_save_vs_tower_sessions_redis",
                ours_s.ratio_to(peer_s),
                "= load_save_vs_tower_sessions_redis.c64 (goal >= 1.3)",
            );
            report.ratio(
                "load_save_vs_raw",
                ours_s.ratio_to(raw_s),
                "= load_save_vs_raw.c64 (goal >= 0.90)",
            );
        }
        report.summary(
            &format!("raw_load_save.{c}"),
            raw_s,
            &format!(
                "HGETALL (16 fields, 1 KB) + HSET of one field on raw fred, {concurrency} tasks"
            ),
        );
        report.summary(
            &format!("tower_sessions_redis_load_save.{c}"),
            peer_s,
            &format!("tower-sessions 0.14 Session over tower-sessions-redis-store 0.16: GET + msgpack decode, insert, msgpack encode + SET XX EXAT, {concurrency} tasks"),
        );
        report.ratio(
            &format!("tower_sessions_redis_vs_raw.{c}"),
            peer_s.ratio_to(raw_s),
            "tower-sessions-redis-store / raw HGETALL + HSET",
        );
    }

    // --- the lost-writes race.
    let rounds = ctx.pick(1_000u64, 200);
    let peer_lost = {
        let store_c = Arc::clone(&store);
        let store_q = Arc::clone(&store);
        let store_r = Arc::clone(&store);
        race(
            rounds,
            move |r| {
                let store = Arc::clone(&store_c);
                async move { peer_create(&store, r).await }
            },
            move |id, name, v| {
                let store = Arc::clone(&store_q);
                async move { peer_request(&store, id, name, v).await }
            },
            move |id, name| {
                let store = Arc::clone(&store_r);
                async move {
                    let s = Session::new(Some(id), store, peer_expiry());
                    Ok(s.get::<String>(name).await?)
                }
            },
        )
        .await?
    };
    report.add(
        "lost_writes_peer",
        peer_lost as f64,
        Unit::Count,
        format!("tower-sessions-redis-store: rounds of {rounds} in which one of two concurrent requests' field was lost"),
    );
    let ts_lost = {
        let (s_c, s_q, s_r) = (
            Arc::clone(&ts_store),
            Arc::clone(&ts_store),
            Arc::clone(&ts_store),
        );
        race(
            rounds,
            move |r| {
                let store = Arc::clone(&s_c);
                async move { ts_create(&store, r).await }
            },
            move |id, name, v| {
                let store = Arc::clone(&s_q);
                async move { ts_request(&store, id, name, v).await }
            },
            move |id, name| {
                let store = Arc::clone(&s_r);
                async move {
                    let s =
                        tower_sessions_core_015::Session::new(Some(id), store, ours_tower_expiry());
                    Ok(s.get::<String>(name).await?)
                }
            },
        )
        .await?
    };
    report.add(
        "lost_writes_tower_store",
        ts_lost as f64,
        Unit::Count,
        format!("fredkit-session's TowerSessionStore under tower-sessions (whole record handed to save; documented to narrow, not close, the race): rounds of {rounds} that lost a field"),
    );
    let ours_lost = {
        let (s_c, s_q, s_r) = (sessions.clone(), sessions.clone(), sessions.clone());
        race(
            rounds,
            move |r| {
                let sessions = s_c.clone();
                async move { ours_create(&sessions, r).await }
            },
            move |id, name, v| {
                let sessions = s_q.clone();
                async move { ours_request(&sessions, &id, name, v).await }
            },
            move |id, name| {
                let sessions = s_r.clone();
                async move {
                    let Some(record) = sessions.load(&id).await? else {
                        return Ok(None);
                    };
                    Ok(record.get::<String>(name)?)
                }
            },
        )
        .await?
    };
    report.add(
        "lost_writes",
        ours_lost as f64,
        Unit::Count,
        format!("fredkit-session: rounds of {rounds} in which one of two concurrent requests' field was lost (must be 0)"),
    );
    println!(
        "   lost writes: tower-sessions-redis-store {peer_lost}, fredkit-session {ours_lost}, its TowerSessionStore {ts_lost} of {rounds} rounds"
    );

    let _ = raw.quit().await;
    Ok(())
}
