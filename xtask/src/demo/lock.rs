//! Demo section: fredkit-lock.

use super::{step, Demo, Section, SectionFuture};
use anyhow::{bail, Result};
use fredkit_lock::{FencedStore, FencedWrite, LockManager, LockOptions};
use std::time::{Duration, Instant};

pub(crate) const SECTION: Section = Section {
    name: "lock",
    title: "fredkit-lock: locks with fencing tokens, watchdog, Redlock, semaphores",
    run,
};

fn run(demo: &Demo) -> SectionFuture<'_> {
    Box::pin(tour(demo))
}

fn opts(ttl_ms: u64, wait_ms: u64) -> Result<LockOptions> {
    Ok(LockOptions::builder()
        .ttl(Duration::from_millis(ttl_ms))
        .wait(Duration::from_millis(wait_ms))
        .build()?)
}

async fn tour(demo: &Demo) -> Result<()> {
    let redis = &demo.redis;
    // A fresh prefix per run: fencing counters never expire (by design).
    let prefix = format!("demo:locks:{}", std::process::id());
    let locks = LockManager::new(redis, &prefix)?;
    let rival = LockManager::new(redis, &prefix)?;

    let Some(first) = locks.acquire("invoice:42", &opts(10_000, 0)?).await? else {
        bail!("a fresh lock was busy");
    };
    step(
        "locks.acquire(\"invoice:42\", ttl 10 s)",
        format!(
            "granted in one script; fencing token {}",
            first.fencing_token()
        ),
    );
    let busy = rival.acquire("invoice:42", &opts(10_000, 0)?).await?;
    step(
        "rival.acquire(\"invoice:42\") while held (wait 0)",
        format!(
            "{:?} (busy: no waiting by default)",
            busy.map(|g| g.fencing_token())
        ),
    );

    // A waiter is woken by the release (pub/sub), not by polling.
    let waiter = {
        let rival = rival.clone();
        let o = opts(10_000, 5_000)?;
        tokio::spawn(async move {
            let g = rival.acquire("invoice:42", &o).await;
            (g, Instant::now())
        })
    };
    // Let the waiter find the lock busy first (its first try subscribes).
    let contended = rival.metrics().contended;
    let deadline = Instant::now() + Duration::from_secs(5);
    while rival.metrics().contended == contended && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let released_at = Instant::now();
    let ours = first.release().await?;
    let (next, held_at) = waiter.await?;
    let Some(next) = next? else {
        bail!("the waiter was not handed the lock");
    };
    step(
        "first.release() while rival waits (wait 5 s)",
        format!(
            "released: {ours}; rival woken by pub/sub ({} wake-up) and holds it {:.2} ms after the release began; fencing token {}",
            rival.metrics().wakeups,
            held_at.duration_since(released_at).as_secs_f64() * 1e3,
            next.fencing_token()
        ),
    );
    next.release().await?;

    // A holder that stalls past its TTL: fencing tokens and the fenced store.
    let store = FencedStore::new(redis, format!("{prefix}:data"))?;
    let Some(stale) = locks.acquire("report", &opts(100, 0)?).await? else {
        bail!("report lock busy");
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    let Some(fresh) = rival.acquire("report", &opts(10_000, 0)?).await? else {
        bail!("the stale lock did not expire");
    };
    let w_new = store
        .write("report", "fresh result", fresh.fencing_token(), None)
        .await?;
    let w_old = store
        .write("report", "stale result", stale.fencing_token(), None)
        .await?;
    step(
        "holder A (ttl 100 ms) stalls 200 ms; holder B takes the lock",
        format!(
            "A token {}, B token {}; A.is_lost() = {}",
            stale.fencing_token(),
            fresh.fencing_token(),
            stale.is_lost()
        ),
    );
    step(
        "store.write(\"report\", .., token) by B, then by A",
        format!("B: {w_new:?}; A: {w_old:?} (the storage refuses the stale holder)"),
    );
    if w_old == FencedWrite::Written {
        bail!("the stale write was accepted");
    }
    let stale_release = stale.release().await?;
    step(
        "A.release()",
        format!("{stale_release} (B's lock is left alone)"),
    );
    fresh.release().await?;

    // The watchdog renews while the guard lives.
    let o = LockOptions::builder()
        .ttl(Duration::from_millis(300))
        .watchdog(true)
        .build()?;
    let Some(long) = locks.acquire("nightly-job", &o).await? else {
        bail!("nightly-job busy");
    };
    tokio::time::sleep(Duration::from_millis(1_000)).await;
    let still = rival
        .acquire("nightly-job", &opts(1_000, 0)?)
        .await?
        .is_none();
    step(
        "watchdog on, ttl 300 ms, work for 1 s",
        format!(
            "still held: {still}; lost: {}; renewals so far: {}",
            long.is_lost(),
            locks.metrics().renewals
        ),
    );
    long.release().await?;

    // Semaphore with expiring permits.
    let exports = locks.semaphore("exports", 2)?;
    let a = exports.acquire(&opts(10_000, 0)?).await?;
    let b = exports.acquire(&opts(10_000, 0)?).await?;
    let c = exports.acquire(&opts(10_000, 0)?).await?;
    step(
        "locks.semaphore(\"exports\", 2): three tries",
        format!(
            "{}, {}, {} (held now: {})",
            a.is_some(),
            b.is_some(),
            c.is_some(),
            exports.held().await?
        ),
    );
    for p in [a, b].into_iter().flatten() {
        p.release().await?;
    }

    step(
        "Redlock",
        "needs N independent servers (the demo has one): see `Redlock` docs and the fault test",
    );
    step("locks.metrics()", format!("{:?}", locks.metrics()));
    Ok(())
}
