//! fredkit-lock against real servers: standalone and a 3-master cluster
//! (rstest cases) for every primitive's behaviour without faults; the fault
//! tests here are standalone, Sentinel or cluster as their names say, 5
//! independent servers for Redlock. More fault tests, and which topology
//! each README claim is tested on, in `faults.rs` and the README's "Tested
//! on" table.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use fred::prelude::*;
use fredkit_conn::Redis;
use fredkit_core::traits::DistributedLock;
use fredkit_core::{Backoff, ErrorKind, KeySpace};
use fredkit_lock::{
    FencedCounter, FencedIncr, FencedStore, FencedWrite, LockManager, LockOptions, Redlock,
    RedlockOptions,
};
use fredkit_testkit::{
    shared_url, unique_prefix, IndependentServers, RedisServer, ServerOptions, Topology,
};
use rstest::rstest;

/// Bounds every wait so a broken build fails instead of hanging.
const DEADLINE: Duration = Duration::from_secs(30);

async fn connect(url: &str) -> Redis {
    fredkit_testkit::connect(url).await.unwrap()
}

async fn shared(topology: Topology) -> Redis {
    connect(&shared_url(topology).unwrap()).await
}

/// Waits until `m` has seen its lock busy at least once (a waiter is registered).
async fn until_contended(m: &LockManager) {
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while m.metrics().contended == 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the waiter never tried"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// A prefix KeySpace accepts (testkit's ends with ':').
fn prefix(test: &str) -> String {
    unique_prefix(test).trim_end_matches(':').to_string()
}

fn opts(ttl_ms: u64, wait_ms: u64) -> LockOptions {
    LockOptions::builder()
        .ttl(Duration::from_millis(ttl_ms))
        .wait(Duration::from_millis(wait_ms))
        .build()
        .unwrap()
}

#[rstest]
#[case::standalone(Topology::Standalone)]
#[case::cluster(Topology::Cluster)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_exclusion_16_tasks_2_managers_count_exactly_1600(#[case] topology: Topology) {
    let url = shared_url(topology).unwrap();
    let p = prefix("lock_mutex");
    // Two managers, each on its own connection, like two processes.
    // A generous command timeout: on a loaded 2-core box a command can take
    // more than the default 1 s, and such an error says nothing about the lock.
    let sep = if url.contains('?') { '&' } else { '?' };
    let url = format!("{url}{sep}command_timeout=5s");
    let managers = [
        LockManager::new(&connect(&url).await, &p).unwrap(),
        LockManager::new(&connect(&url).await, &p).unwrap(),
    ];
    let counter_client = connect(&url).await;
    let counter = format!("{p}:counter");
    // Longer than any GET + SET can take, so mutual exclusion is the lock's alone.
    let o = opts(20_000, 60_000);
    let mut tasks = Vec::new();
    for t in 0..16 {
        let m = managers[t % 2].clone();
        let redis = counter_client.clone();
        let counter = counter.clone();
        let o = o.clone();
        tasks.push(tokio::spawn(async move {
            for _ in 0..100 {
                let guard = m
                    .acquire("counter", &o)
                    .await
                    .unwrap()
                    .expect("waited 30 s for the lock");
                let v: Option<i64> = redis.client().get(&counter).await.unwrap();
                // Widen the race window between GET and SET.
                tokio::task::yield_now().await;
                redis
                    .client()
                    .set::<(), _, _>(&counter, v.unwrap_or(0) + 1, None, None, false)
                    .await
                    .unwrap();
                assert!(
                    guard.release().await.unwrap(),
                    "lock expired under the holder"
                );
            }
        }));
    }
    for t in tasks {
        tokio::time::timeout(DEADLINE * 2, t)
            .await
            .unwrap()
            .unwrap();
    }
    let v: i64 = counter_client.client().get(&counter).await.unwrap();
    assert_eq!(v, 1600);
    if topology == Topology::Standalone {
        // One wake-up subscription per manager, however many waiters and
        // hand-overs (on a cluster NUMSUB only sees one node).
        let numsub: Vec<fred::types::Value> = counter_client
            .client()
            .pubsub_numsub(managers[0].wake_channel())
            .await
            .unwrap();
        assert_eq!(
            numsub.get(1).and_then(|v| v.as_i64()),
            Some(2),
            "{numsub:?}"
        );
    }
    let acquired: u64 = managers.iter().map(|m| m.metrics().acquired).sum();
    assert_eq!(acquired, 1600);
}

#[rstest]
#[case::standalone(Topology::Standalone)]
#[case::cluster(Topology::Cluster)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fencing_tokens_strictly_increase_across_grants_and_client_restarts(
    #[case] topology: Topology,
) {
    let url = shared_url(topology).unwrap();
    let p = prefix("lock_fence");
    let o = opts(5_000, 0);
    let mut tokens = Vec::new();
    {
        let a = LockManager::new(&connect(&url).await, &p).unwrap();
        let b = LockManager::new(&connect(&url).await, &p).unwrap();
        for i in 0..10 {
            let m = if i % 2 == 0 { &a } else { &b };
            let g = m.acquire("res", &o).await.unwrap().unwrap();
            tokens.push(g.fencing_token());
            assert!(g.release().await.unwrap());
        }
        // Through the object-safe trait too.
        let dl: Arc<dyn DistributedLock> = Arc::new(a.clone());
        let lease = dl
            .try_acquire("res", Duration::from_secs(5))
            .await
            .unwrap()
            .unwrap();
        tokens.push(lease.fencing_token);
        assert!(dl.release(&lease).await.unwrap());
        // Grants that expire instead of being released count as well.
        let g = a.acquire("res", &opts(50, 0)).await.unwrap().unwrap();
        tokens.push(g.fencing_token());
        std::mem::forget(g);
        tokio::time::sleep(Duration::from_millis(80)).await;
    }
    // A "restarted" client: new connection, new manager.
    let redis = connect(&url).await;
    let c = LockManager::new(&redis, &p).unwrap();
    for _ in 0..5 {
        let g = c.acquire("res", &o).await.unwrap().unwrap();
        tokens.push(g.fencing_token());
        g.release().await.unwrap();
    }
    assert_eq!(tokens.len(), 17);
    assert!(
        tokens.windows(2).all(|w| w[0] < w[1]),
        "fencing tokens must strictly increase: {tokens:?}"
    );
}

#[rstest]
#[case::standalone(Topology::Standalone)]
#[case::cluster(Topology::Cluster)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn holder_paused_past_ttl_loses_lock_and_its_release_spares_the_new_holder(
    #[case] topology: Topology,
) {
    let url = shared_url(topology).unwrap();
    let p = prefix("lock_stale");
    let old_m = LockManager::new(&connect(&url).await, &p).unwrap();
    let new_m = LockManager::new(&connect(&url).await, &p).unwrap();
    let old = old_m.acquire("job", &opts(200, 0)).await.unwrap().unwrap();
    assert!(new_m
        .acquire("job", &opts(5_000, 0))
        .await
        .unwrap()
        .is_none());
    // The holder "pauses" past its TTL (no watchdog).
    tokio::time::sleep(Duration::from_millis(350)).await;
    assert!(old.is_lost(), "the lease ran out locally too");
    let new = new_m
        .acquire("job", &opts(5_000, 0))
        .await
        .unwrap()
        .expect("lock expired");
    assert!(new.fencing_token() > old.fencing_token());
    // The stale holder can neither extend nor release the new holder's lock.
    assert!(!old.extend(Duration::from_secs(5)).await.unwrap());
    assert!(!old.release().await.unwrap());
    assert!(
        old_m
            .acquire("job", &opts(5_000, 0))
            .await
            .unwrap()
            .is_none(),
        "the new holder's lock must survive the stale release"
    );
    assert!(new.release().await.unwrap());
    assert!(old_m.metrics().release_not_held >= 1);
}

/// A holder whose whole process stalls (GC pause, SIGSTOP, swapped out): its
/// runtime thread is blocked, so the watchdog cannot renew either.
#[rstest]
#[case::standalone(Topology::Standalone)]
#[case::cluster(Topology::Cluster)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watchdog_holder_paused_past_ttl_is_marked_lost(#[case] topology: Topology) {
    let url = shared_url(topology).unwrap();
    let p = prefix("lock_paused_watchdog");
    let (acquired_tx, acquired_rx) = std::sync::mpsc::channel::<u64>();
    let holder_url = url.clone();
    let holder_prefix = p.clone();
    let holder = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let redis = connect(&holder_url).await;
            let m = LockManager::new(&redis, &holder_prefix).unwrap();
            let o = LockOptions::builder()
                .ttl(Duration::from_millis(600))
                .watchdog(true)
                .build()
                .unwrap();
            let guard = m.acquire("job", &o).await.unwrap().unwrap();
            // Renewals work while the holder runs.
            tokio::time::sleep(Duration::from_millis(1_300)).await;
            assert!(!guard.is_lost());
            assert!(m.metrics().renewals >= 1);
            acquired_tx.send(guard.fencing_token()).unwrap();
            // The stall: nothing on this runtime runs, the watchdog neither.
            std::thread::sleep(Duration::from_millis(2_000));
            let lost = tokio::time::timeout(Duration::from_secs(5), guard.lost())
                .await
                .is_ok();
            let renew_after_pause = guard.extend(Duration::from_millis(300)).await.unwrap();
            let released = guard.release().await.unwrap();
            (lost, renew_after_pause, released, m.metrics().lost)
        })
    });
    let old_token = acquired_rx.recv_timeout(DEADLINE).unwrap();
    let m = LockManager::new(&connect(&url).await, &p).unwrap();
    let new = m
        .acquire("job", &opts(10_000, 5_000))
        .await
        .unwrap()
        .expect("the stalled holder's lock expires");
    assert!(new.fencing_token() > old_token);
    let (lost, renewed, released, lost_count) =
        tokio::task::spawn_blocking(move || holder.join().unwrap())
            .await
            .unwrap();
    assert!(lost, "lost() must fire for the stalled holder");
    assert!(
        !renewed,
        "the stalled holder cannot renew the new holder's lock"
    );
    assert!(!released, "the stalled holder's release must report false");
    assert!(lost_count >= 1);
    // The new holder still holds it.
    assert!(m.acquire("job", &opts(1_000, 0)).await.unwrap().is_none());
    assert!(new.release().await.unwrap());
}

#[rstest]
#[case::standalone(Topology::Standalone)]
#[case::cluster(Topology::Cluster)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watchdog_keeps_lock_for_3_ttls_and_an_aborted_holder_task_releases_it_on_drop(
    #[case] topology: Topology,
) {
    let url = shared_url(topology).unwrap();
    let p = prefix("lock_watchdog");
    let holder_m = LockManager::new(&connect(&url).await, &p).unwrap();
    let other = LockManager::new(&connect(&url).await, &p).unwrap();
    let ttl = Duration::from_millis(600);
    let o = LockOptions::builder()
        .ttl(ttl)
        .watchdog(true)
        .build()
        .unwrap();
    let (tx, rx) = tokio::sync::oneshot::channel();
    let hm = holder_m.clone();
    let holder = tokio::spawn(async move {
        let guard = hm.acquire("job", &o).await.unwrap().unwrap();
        tx.send(guard.fencing_token()).unwrap();
        // Hold for ever; only abort ends this task.
        std::future::pending::<()>().await;
        drop(guard);
    });
    let token = rx.await.unwrap();
    let held_until = tokio::time::Instant::now() + ttl * 3 + Duration::from_millis(100);
    while tokio::time::Instant::now() < held_until {
        assert!(
            other
                .acquire("job", &opts(5_000, 0))
                .await
                .unwrap()
                .is_none(),
            "the watchdog must keep the lock alive"
        );
        tokio::time::sleep(Duration::from_millis(40)).await;
    }
    assert!(holder_m.metrics().renewals >= 3);
    assert_eq!(holder_m.metrics().lost, 0);
    assert_eq!(holder_m.metrics().released, 0);
    holder.abort();
    let _ = holder.await;
    // The aborted task dropped its guard, whose background release found the
    // lock still held by its token (the watchdog kept it alive until then)
    // and deleted it: a release, not an expiry. (A holder whose process dies
    // without running drop is fault_holder_process_sigkilled_* in faults.rs.)
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while holder_m.metrics().released == 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "dropping the aborted holder's guard never released the lock: {:?}",
            holder_m.metrics()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(holder_m.metrics().release_not_held, 0);
    let next = other
        .acquire("job", &opts(600, 0))
        .await
        .unwrap()
        .expect("released on drop: free at once");
    assert!(next.fencing_token() > token);
    // The aborted holder's watchdog is gone, not renewing (or failing to
    // renew) in the background for ever.
    let renewals = holder_m.metrics().renewals;
    tokio::time::sleep(ttl).await;
    assert_eq!(holder_m.metrics().renewals, renewals);
    assert_eq!(
        holder_m.metrics().lost,
        0,
        "no leaked watchdog found the lock gone"
    );
    next.release().await.unwrap();
}

#[rstest]
#[case::standalone(Topology::Standalone)]
#[case::cluster(Topology::Cluster)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiter_is_woken_by_release_not_by_polling(#[case] topology: Topology) {
    let url = shared_url(topology).unwrap();
    let p = prefix("lock_wake");
    let holder_m = LockManager::new(&connect(&url).await, &p).unwrap();
    let waiter_m = LockManager::new(&connect(&url).await, &p).unwrap();
    let holder = holder_m
        .acquire("job", &opts(30_000, 0))
        .await
        .unwrap()
        .unwrap();
    // Polling so slow, and a lock so long, that only the wake-up can end the wait in time.
    let o = LockOptions::builder()
        .ttl(Duration::from_secs(5))
        .wait(Duration::from_secs(8))
        .poll_backoff(
            Backoff::builder()
                .initial(Duration::from_secs(20))
                .max(Duration::from_secs(20))
                .jitter(false)
                .build()
                .unwrap(),
        )
        .build()
        .unwrap();
    let wm = waiter_m.clone();
    let waiter = tokio::spawn(async move {
        let g = wm.acquire("job", &o).await.unwrap();
        (g.map(|g| g.fencing_token()), wm.metrics())
    });
    until_contended(&waiter_m).await;
    assert!(holder.release().await.unwrap());
    let (got, metrics) = tokio::time::timeout(DEADLINE, waiter)
        .await
        .unwrap()
        .unwrap();
    assert!(got.is_some(), "the waiter must be woken by the release");
    assert!(metrics.wakeups >= 1, "{metrics:?}");
}

#[rstest]
#[case::standalone(Topology::Standalone)]
#[case::cluster(Topology::Cluster)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uncontended_release_publishes_nothing(#[case] topology: Topology) {
    let redis = shared(topology).await;
    let p = prefix("lock_quiet");
    let m = LockManager::new(&redis, &p).unwrap();
    let subscriber = fredkit_pubsub::Subscriber::with_codec(
        &redis,
        fredkit_core::MsgPack,
        fredkit_pubsub::PubSubOptions::default().mode(fredkit_pubsub::Mode::Plain),
    )
    .await
    .unwrap();
    let mut wake = subscriber.subscribe_bytes(m.wake_channel()).await.unwrap();
    for i in 0..20 {
        let g = m
            .acquire(&format!("r{i}"), &opts(5_000, 0))
            .await
            .unwrap()
            .unwrap();
        assert!(g.release().await.unwrap());
    }
    // One contended hand-over: exactly one wake-up.
    let g = m.acquire("busy", &opts(5_000, 0)).await.unwrap().unwrap();
    let m2 = m.clone();
    let waiter = tokio::spawn(async move { m2.acquire("busy", &opts(5_000, 10_000)).await });
    until_contended(&m).await;
    assert!(g.release().await.unwrap());
    let next = tokio::time::timeout(DEADLINE, waiter)
        .await
        .unwrap()
        .unwrap()
        .unwrap()
        .unwrap();
    next.release().await.unwrap();
    use futures::StreamExt;
    let first = tokio::time::timeout(Duration::from_secs(2), wake.next())
        .await
        .unwrap()
        .unwrap();
    match first {
        fredkit_pubsub::Delivery::Message(msg) => {
            let key = msg.payload.unwrap();
            assert!(String::from_utf8_lossy(&key).contains("{busy}"), "{key:?}");
        }
        other => panic!("expected the wake-up for 'busy', got {other:?}"),
    }
    // The waiter flag may still be up for the final release (it expires
    // with the waiter's wait), so at most one more message, never one per
    // uncontended lock.
    let mut extra = 0;
    while let Ok(Some(_)) = tokio::time::timeout(Duration::from_millis(300), wake.next()).await {
        extra += 1;
    }
    assert!(extra <= 1, "{extra} extra wake-ups");
}

#[rstest]
#[case::standalone(Topology::Standalone)]
#[case::cluster(Topology::Cluster)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fenced_write_with_older_token_after_newer_one_is_rejected(#[case] topology: Topology) {
    let redis = shared(topology).await;
    let p = prefix("lock_fenced");
    let store = FencedStore::new(&redis, format!("{p}:data")).unwrap();
    assert_eq!(
        store.write("doc", "v8", 8, None).await.unwrap(),
        FencedWrite::Written
    );
    // Equal tokens are accepted (one holder may write twice).
    assert_eq!(
        store.write("doc", "v8b", 8, None).await.unwrap(),
        FencedWrite::Written
    );
    assert_eq!(
        store.write("doc", "v7", 7, None).await.unwrap(),
        FencedWrite::Rejected { newest: 8 }
    );
    assert_eq!(store.read("doc").await.unwrap().unwrap(), "v8b".as_bytes());

    // With real locks: the stale holder's write loses to the new holder's.
    let m = LockManager::new(&redis, &p).unwrap();
    let old = m.acquire("doc2", &opts(100, 0)).await.unwrap().unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let new = m.acquire("doc2", &opts(5_000, 0)).await.unwrap().unwrap();
    let n1 = new.fencing_token();
    assert_eq!(
        store.write("doc2", "new", n1, None).await.unwrap(),
        FencedWrite::Written
    );
    assert_eq!(
        store
            .write("doc2", "old", old.fencing_token(), None)
            .await
            .unwrap(),
        FencedWrite::Rejected { newest: n1 }
    );
    assert_eq!(store.read("doc2").await.unwrap().unwrap(), "new".as_bytes());
    assert_eq!(
        store.write("doc2", "x", 0, None).await.unwrap_err().kind(),
        ErrorKind::InvalidInput
    );
    new.release().await.unwrap();
}

#[rstest]
#[case::standalone(Topology::Standalone)]
#[case::cluster(Topology::Cluster)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn semaphore_of_3_never_has_more_than_3_holders_among_20_contenders(
    #[case] topology: Topology,
) {
    let url = shared_url(topology).unwrap();
    let p = prefix("lock_sem");
    let managers = [
        LockManager::new(&connect(&url).await, &p).unwrap(),
        LockManager::new(&connect(&url).await, &p).unwrap(),
    ];
    let holders = Arc::new(AtomicUsize::new(0));
    let max = Arc::new(AtomicUsize::new(0));
    let o = opts(5_000, 30_000);
    let mut tasks = Vec::new();
    for t in 0..20 {
        let sem = managers[t % 2].semaphore("exports", 3).unwrap();
        let (holders, max, o) = (holders.clone(), max.clone(), o.clone());
        tasks.push(tokio::spawn(async move {
            for _ in 0..3 {
                let permit = sem
                    .acquire(&o)
                    .await
                    .unwrap()
                    .expect("a permit within 30 s");
                let now = holders.fetch_add(1, Ordering::SeqCst) + 1;
                max.fetch_max(now, Ordering::SeqCst);
                assert!(sem.held().await.unwrap() <= 3);
                tokio::time::sleep(Duration::from_millis(3)).await;
                holders.fetch_sub(1, Ordering::SeqCst);
                assert!(permit.release().await.unwrap());
            }
        }));
    }
    for t in tasks {
        tokio::time::timeout(DEADLINE * 2, t)
            .await
            .unwrap()
            .unwrap();
    }
    let max = max.load(Ordering::SeqCst);
    assert!(max <= 3, "{max} holders at once");
    assert!(max >= 1);
    let acquired: u64 = managers.iter().map(|m| m.metrics().acquired).sum();
    assert_eq!(acquired, 60);
}

#[rstest]
#[case::standalone(Topology::Standalone)]
#[case::cluster(Topology::Cluster)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn semaphore_permit_dropped_without_release_returns_after_its_ttl(
    #[case] topology: Topology,
) {
    let redis = shared(topology).await;
    let p = prefix("lock_sem_leak");
    let m = LockManager::new(&redis, &p).unwrap();
    let sem = m.semaphore("slots", 3).unwrap();
    let long = opts(10_000, 0);
    // A crashed holder: its permit is never given back (no Drop runs).
    let leaked = sem.acquire(&opts(300, 0)).await.unwrap().unwrap();
    std::mem::forget(leaked);
    let a = sem.acquire(&long).await.unwrap().unwrap();
    let b = sem.acquire(&long).await.unwrap().unwrap();
    assert!(sem.acquire(&long).await.unwrap().is_none(), "3 of 3 taken");
    assert_eq!(sem.held().await.unwrap(), 3);
    assert_eq!(
        a.extend(Duration::from_secs(30 * 86_400))
            .await
            .unwrap_err()
            .kind(),
        ErrorKind::InvalidInput
    );
    let c = sem
        .acquire(&opts(10_000, 3_000))
        .await
        .unwrap()
        .expect("the leaked permit expires and comes back");
    assert_eq!(sem.held().await.unwrap(), 3);
    assert!(sem.acquire(&long).await.unwrap().is_none());
    for permit in [a, b, c] {
        assert!(permit.release().await.unwrap());
    }
    assert_eq!(sem.held().await.unwrap(), 0);
}

#[rstest]
#[case::standalone(Topology::Standalone)]
#[case::cluster(Topology::Cluster)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_lock_releases_after_work_and_after_cancellation(#[case] topology: Topology) {
    let redis = shared(topology).await;
    let m = LockManager::new(&redis, prefix("lock_with")).unwrap();
    let o = opts(10_000, 0);
    let out = m
        .with_lock("r", &o, |ctx| async move {
            assert!(!ctx.lost.is_lost());
            ctx.fencing_token
        })
        .await
        .unwrap()
        .unwrap();
    assert!(out >= 1);
    // Released: the next one gets it at once.
    let g = m
        .acquire("r", &o)
        .await
        .unwrap()
        .expect("with_lock released");
    // Busy: the work does not run.
    let ran = m
        .with_lock("r", &o, |_| async { unreachable!() })
        .await
        .unwrap();
    assert!(ran.is_none());
    g.release().await.unwrap();
    // Cancelled mid-work: the dropped guard releases in the background.
    let m2 = m.clone();
    let o2 = o.clone();
    let task = tokio::spawn(async move {
        m2.with_lock("r", &o2, |_| std::future::pending::<()>())
            .await
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    task.abort();
    let _ = task.await;
    let back = m
        .acquire("r", &opts(10_000, 2_000))
        .await
        .unwrap()
        .expect("the cancelled with_lock released in the background");
    back.release().await.unwrap();
}

#[rstest]
#[case::standalone(Topology::Standalone)]
#[case::cluster(Topology::Cluster)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guard_moves_across_tasks_and_only_its_token_can_release(#[case] topology: Topology) {
    let redis = shared(topology).await;
    let m = LockManager::new(&redis, prefix("lock_move")).unwrap();
    let g = m.acquire("r", &opts(10_000, 0)).await.unwrap().unwrap();
    let lease = g.lease();
    // Moved to another task, released there.
    let released = tokio::spawn(async move { g.release().await.unwrap() })
        .await
        .unwrap();
    assert!(released);
    // An old lease cannot release or extend a later grant.
    let g2 = m.acquire("r", &opts(10_000, 0)).await.unwrap().unwrap();
    assert!(!DistributedLock::release(&m, &lease).await.unwrap());
    assert!(!DistributedLock::extend(&m, &lease, Duration::from_secs(1))
        .await
        .unwrap());
    assert!(g2.extend(Duration::from_secs(20)).await.unwrap());
    // extend takes the TTLs acquire takes (1 ms ..= 24 h), like the trait's extend.
    for bad in [
        Duration::ZERO,
        Duration::from_secs(30 * 86_400),
        Duration::MAX,
    ] {
        assert_eq!(
            g2.extend(bad).await.unwrap_err().kind(),
            ErrorKind::InvalidInput,
            "{bad:?}"
        );
    }
    assert!(m.acquire("r", &opts(10_000, 0)).await.unwrap().is_none());
    assert!(g2.release().await.unwrap());
    assert_eq!(
        m.acquire("", &opts(1_000, 0)).await.unwrap_err().kind(),
        ErrorKind::InvalidInput
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_error_is_never_a_granted_lock() {
    // Nothing listens there: every command fails after the command timeout.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let config = fredkit_conn::RedisConfig::from_url(&format!(
        "redis://127.0.0.1:{port}?command_timeout=300ms&connect_timeout=300ms"
    ))
    .unwrap();
    let redis = Redis::connect(config).await.unwrap();
    let m = LockManager::new(&redis, "t:lock_fail_closed").unwrap();
    for o in [opts(1_000, 0), opts(1_000, 500)] {
        let r = tokio::time::timeout(DEADLINE, m.acquire("r", &o))
            .await
            .unwrap();
        assert!(
            r.is_err(),
            "an unreachable Redis must be an error, got {r:?}"
        );
    }
    let sem = m.semaphore("s", 2).unwrap();
    assert!(sem.acquire(&opts(1_000, 0)).await.is_err());
    assert_eq!(m.metrics().acquired, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replica_confirmation_fails_closed_without_replicas_and_passes_with_one() {
    let standalone = shared(Topology::Standalone).await;
    let m = LockManager::new(&standalone, prefix("lock_wait_none")).unwrap();
    let o = LockOptions::builder()
        .ttl(Duration::from_secs(10))
        .replicas(1, Duration::from_millis(100))
        .build()
        .unwrap();
    let err = m.acquire("r", &o).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Timeout, "{err}");
    // The grant was undone.
    let g = m
        .acquire("r", &opts(1_000, 0))
        .await
        .unwrap()
        .expect("undone grant");
    g.release().await.unwrap();

    // Master + replica (the sentinel group): confirmed.
    let sentinel = shared(Topology::Sentinel).await;
    let m = LockManager::new(&sentinel, prefix("lock_wait_one")).unwrap();
    let o = LockOptions::builder()
        .ttl(Duration::from_secs(10))
        .replicas(1, Duration::from_secs(2))
        .build()
        .unwrap();
    let g = m
        .acquire("r", &o)
        .await
        .unwrap()
        .expect("one replica confirms");
    assert!(g.release().await.unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_redlock_acquires_with_2_of_5_killed_and_refuses_with_3() {
    let mut servers = tokio::task::spawn_blocking(|| IndependentServers::start(5).unwrap())
        .await
        .unwrap();
    let mut nodes = Vec::new();
    let mut others = Vec::new();
    for url in servers.urls() {
        nodes.push(connect(&url).await);
        others.push(connect(&url).await);
    }
    let o = RedlockOptions::builder()
        .ttl(Duration::from_secs(5))
        .retries(1)
        .retry_delay(Duration::from_millis(50))
        .build()
        .unwrap();
    let redlock = Redlock::new(nodes, "t:redlock", o.clone()).unwrap();
    let rival = Redlock::new(others, "t:redlock", o).unwrap();
    assert_eq!(redlock.quorum(), 3);

    let started = tokio::time::Instant::now();
    let g = redlock.acquire("job").await.unwrap().expect("all 5 up");
    let elapsed = started.elapsed();
    // validity = ttl - (the round's elapsed, at most what we measured) - drift.
    let o = RedlockOptions::builder()
        .ttl(Duration::from_secs(5))
        .build()
        .unwrap();
    assert!(
        g.validity() <= o.ttl() - o.drift() && g.validity() >= o.ttl() - elapsed - o.drift(),
        "validity {:?} is not ttl - elapsed - drift (elapsed <= {elapsed:?})",
        g.validity()
    );
    assert!(
        rival.acquire("job").await.unwrap().is_none(),
        "mutual exclusion"
    );
    assert_eq!(g.release().await.unwrap(), 5);

    servers.servers_mut()[0].kill().unwrap();
    servers.servers_mut()[1].kill().unwrap();
    let g = redlock
        .acquire("job")
        .await
        .unwrap()
        .expect("3 of 5 is a quorum");
    assert!(rival.acquire("job").await.unwrap().is_none());
    assert_eq!(g.release().await.unwrap(), 3);

    servers.servers_mut()[2].kill().unwrap();
    let err = redlock.acquire("job").await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Connection, "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_server_paused_past_ttl_marks_watchdog_guard_lost() {
    let server =
        tokio::task::spawn_blocking(|| RedisServer::start_with(ServerOptions::default()).unwrap())
            .await
            .unwrap();
    let p = prefix("lock_server_paused");
    let holder_m = LockManager::new(&connect(&server.url()).await, &p).unwrap();
    let other = LockManager::new(&connect(&server.url()).await, &p).unwrap();
    let o = LockOptions::builder()
        .ttl(Duration::from_millis(300))
        .watchdog(true)
        .build()
        .unwrap();
    let g = holder_m.acquire("job", &o).await.unwrap().unwrap();
    server.pause().unwrap();
    let lost = tokio::time::timeout(Duration::from_secs(5), g.lost()).await;
    std::thread::sleep(Duration::from_millis(200));
    server.resume().unwrap();
    assert!(
        lost.is_ok(),
        "lost() must fire when Redis is unreachable past the TTL"
    );
    assert!(holder_m.metrics().lost >= 1);
    let new = other
        .acquire("job", &opts(10_000, 5_000))
        .await
        .unwrap()
        .expect("the lock expired during the pause");
    assert!(!g.release().await.unwrap());
    assert!(other
        .acquire("job", &opts(1_000, 0))
        .await
        .unwrap()
        .is_none());
    assert!(new.release().await.unwrap());
}

/// A cluster master that stops answering (SIGSTOP): locks on its slots fail
/// with an error, never a grant; locks on the other masters keep working;
/// after it resumes, its locks work again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_cluster_master_paused_lock_fails_closed() {
    let cluster = tokio::task::spawn_blocking(|| {
        fredkit_testkit::RedisCluster::start(fredkit_testkit::ClusterOptions::default()).unwrap()
    })
    .await
    .unwrap();
    let url = cluster.url();
    let sep = if url.contains('?') { '&' } else { '?' };
    let redis = Redis::connect(
        fredkit_conn::RedisConfig::from_url(&format!("{url}{sep}command_timeout=500ms")).unwrap(),
    )
    .await
    .unwrap();
    redis.wait_connected().await.unwrap();
    let m = LockManager::new(&redis, prefix("lock_cluster_paused")).unwrap();
    // A resource on master 0 and one elsewhere.
    let owner = |r: &str| {
        cluster
            .master_index_for_slot(fredkit_testkit::key_slot(r.as_bytes()))
            .unwrap()
    };
    let on_paused = (0..1000)
        .map(|i| format!("a{i}"))
        .find(|r| owner(r) == 0)
        .unwrap();
    let elsewhere = (0..1000)
        .map(|i| format!("b{i}"))
        .find(|r| owner(r) != 0)
        .unwrap();
    m.acquire(&on_paused, &opts(5_000, 0))
        .await
        .unwrap()
        .unwrap()
        .release()
        .await
        .unwrap();

    cluster.masters()[0].pause().unwrap();
    let r = tokio::time::timeout(DEADLINE, m.acquire(&on_paused, &opts(5_000, 0)))
        .await
        .unwrap();
    let other = m.acquire(&elsewhere, &opts(5_000, 0)).await;
    cluster.masters()[0].resume().unwrap();
    assert!(
        r.is_err(),
        "a paused master must be an error, never a lock: {r:?}"
    );
    assert!(other.unwrap().is_some(), "other masters keep granting");

    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        match m.acquire(&on_paused, &opts(5_000, 0)).await {
            Ok(Some(g)) => {
                g.release().await.unwrap();
                break;
            }
            other => {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "never recovered: {other:?}"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

#[rstest]
#[case::standalone(Topology::Standalone)]
#[case::cluster(Topology::Cluster)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn semaphore_waiter_is_woken_by_release_not_by_polling(#[case] topology: Topology) {
    let url = shared_url(topology).unwrap();
    let p = prefix("lock_sem_wake");
    let holder_m = LockManager::new(&connect(&url).await, &p).unwrap();
    let waiter_m = LockManager::new(&connect(&url).await, &p).unwrap();
    let sem = holder_m.semaphore("one", 1).unwrap();
    let permit = sem.acquire(&opts(30_000, 0)).await.unwrap().unwrap();
    let o = LockOptions::builder()
        .ttl(Duration::from_secs(5))
        .wait(Duration::from_secs(8))
        .poll_backoff(
            Backoff::builder()
                .initial(Duration::from_secs(20))
                .max(Duration::from_secs(20))
                .jitter(false)
                .build()
                .unwrap(),
        )
        .build()
        .unwrap();
    let wm = waiter_m.clone();
    let waiter = tokio::spawn(async move {
        let sem = wm.semaphore("one", 1).unwrap();
        sem.acquire(&o).await.unwrap().map(|p| p.ttl())
    });
    until_contended(&waiter_m).await;
    assert!(permit.release().await.unwrap());
    let got = tokio::time::timeout(DEADLINE, waiter)
        .await
        .unwrap()
        .unwrap();
    assert!(
        got.is_some(),
        "the semaphore waiter must be woken by the release"
    );
    assert!(waiter_m.metrics().wakeups >= 1);
}

/// The scripts as the crate runs them, for replaying one call exactly.
static ACQUIRE_LUA: fredkit_core::Script =
    fredkit_core::Script::new("t_lock_acquire", include_str!("../../scripts/acquire.lua"));
static SEM_ACQUIRE_LUA: fredkit_core::Script = fredkit_core::Script::new(
    "t_semaphore_acquire",
    include_str!("../../scripts/sem_acquire.lua"),
);

/// fred sends a command again when the connection closes while it is in
/// flight (`max_command_attempts`, reconnect on READONLY/LOADING...): a grant
/// whose reply was lost runs a second time with the same holder token. That
/// replay must be the same grant (same fencing token), not "busy": otherwise
/// the caller gives up, or waits for its own lock, while the lock is held by
/// nobody for a whole TTL.
#[rstest]
#[case::standalone(Topology::Standalone)]
#[case::cluster(Topology::Cluster)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acquire_replayed_after_a_lost_reply_is_the_same_grant(#[case] topology: Topology) {
    let redis = shared(topology).await;
    let p = prefix("lock_replay");
    let m = LockManager::new(&redis, &p).unwrap();
    for (i, mode) in ["0", "1", "2"].into_iter().enumerate() {
        let resource = format!("r{i}");
        let lock = m.keys().tagged(&resource, ["lock"]).unwrap();
        let fence = m.keys().tagged(&resource, ["fence"]).unwrap();
        let run = |token: &'static str| {
            let (lock, fence) = (lock.clone(), fence.clone());
            let client = redis.client().clone();
            async move {
                ACQUIRE_LUA
                    .exec::<_, i64, _, _>(&client, vec![lock, fence], vec![token, "10000", mode])
                    .await
                    .unwrap()
            }
        };
        let first = run("aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa").await;
        assert!(first >= 1, "mode {mode}: {first}");
        let replay = run("aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa").await;
        assert_eq!(replay, first, "mode {mode}: the replay is the same grant");
        // Somebody else is still refused, and the fencing counter did not move.
        assert!(run("bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb").await <= -1);
        let again = run("aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa").await;
        assert_eq!(again, first, "mode {mode}: still the same grant");
        let lease = fredkit_core::traits::LockLease {
            resource: resource.clone(),
            token: "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa".into(),
            fencing_token: first.unsigned_abs(),
        };
        assert!(DistributedLock::release(&m, &lease).await.unwrap());
        let next = m
            .acquire(&resource, &opts(1_000, 0))
            .await
            .unwrap()
            .unwrap();
        // A later grant draws max(counter + 1, server clock in µs).
        assert!(next.fencing_token() > first.unsigned_abs());
        next.release().await.unwrap();
    }

    // A semaphore permit likewise, also when the replayed permit is the last one.
    let sem = m.semaphore("s", 1).unwrap();
    let ks = m.keys().child("sem").unwrap();
    let keys = vec![
        ks.tagged("s", ["permits"]).unwrap(),
        ks.tagged("s", ["wait"]).unwrap(),
    ];
    let run = |token: &'static str| {
        let keys = keys.clone();
        let client = redis.client().clone();
        async move {
            SEM_ACQUIRE_LUA
                .exec::<_, i64, _, _>(&client, keys, vec![token, "10000", "1", "0"])
                .await
                .unwrap()
        }
    };
    assert_eq!(run("cccccccccccccccccccccccccccccccc").await, 1);
    assert!(
        run("cccccccccccccccccccccccccccccccc").await >= 1,
        "the replayed permit is granted, not refused"
    );
    assert!(run("dddddddddddddddddddddddddddddddd").await <= -1);
    assert_eq!(sem.held().await.unwrap(), 1);
}

/// A `FencedStore` and a `LockManager` given the same prefix (natural when
/// the value is named after the resource) must not share keys: a fenced
/// write with a TTL would put that TTL on the lock's fencing counter, which
/// would then restart at 1 and hand out tokens older than earlier ones.
#[rstest]
#[case::standalone(Topology::Standalone)]
#[case::cluster(Topology::Cluster)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fenced_store_with_the_lock_prefix_leaves_the_fencing_counter_alone(
    #[case] topology: Topology,
) {
    let redis = shared(topology).await;
    let p = prefix("lock_fenced_same_prefix");
    let m = LockManager::new(&redis, &p).unwrap();
    let store = FencedStore::new(&redis, &p).unwrap();
    let mut tokens = Vec::new();
    for _ in 0..3 {
        let g = m.acquire("doc", &opts(5_000, 0)).await.unwrap().unwrap();
        tokens.push(g.fencing_token());
        assert_eq!(
            store
                .write(
                    "doc",
                    "v",
                    g.fencing_token(),
                    Some(Duration::from_millis(50))
                )
                .await
                .unwrap(),
            FencedWrite::Written
        );
        assert!(g.release().await.unwrap());
        tokio::time::sleep(Duration::from_millis(120)).await;
    }
    assert!(
        tokens.windows(2).all(|w| w[0] < w[1]),
        "fencing tokens must strictly increase: {tokens:?}"
    );
}

/// A guard (or permit) is `Send`: it may end up dropped on a thread without
/// a tokio runtime (a plain `std::thread`, a synchronous destructor). The
/// lock must still be released in the background, not held for its TTL.
#[rstest]
#[case::standalone(Topology::Standalone)]
#[case::cluster(Topology::Cluster)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guard_dropped_outside_a_runtime_is_still_released(#[case] topology: Topology) {
    let redis = shared(topology).await;
    let m = LockManager::new(&redis, prefix("lock_drop_no_rt")).unwrap();
    let long = opts(60_000, 0);
    let g = m.acquire("r", &long).await.unwrap().unwrap();
    std::thread::spawn(move || drop(g)).join().unwrap();
    let back = m
        .acquire("r", &opts(60_000, 5_000))
        .await
        .unwrap()
        .expect("the guard dropped off the runtime was released");
    back.release().await.unwrap();

    let sem = m.semaphore("s", 1).unwrap();
    let permit = sem.acquire(&long).await.unwrap().unwrap();
    std::thread::spawn(move || drop(permit)).join().unwrap();
    let back = sem
        .acquire(&opts(60_000, 5_000))
        .await
        .unwrap()
        .expect("the permit dropped off the runtime was given back");
    back.release().await.unwrap();
}

/// The fencing counter lost with the server's data (a restart without
/// persistence; an eviction or a deleted key do the same): the next tokens
/// must still be greater than every token handed out before, or a stale
/// holder's write would beat the new holder's at the storage.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_fencing_tokens_keep_increasing_after_a_restart_that_lost_the_data() {
    let mut server =
        tokio::task::spawn_blocking(|| RedisServer::start_with(ServerOptions::default()).unwrap())
            .await
            .unwrap();
    let url = server.url();
    let p = prefix("lock_fence_data_loss");
    let store = FencedStore::new(&shared(Topology::Standalone).await, &p).unwrap();
    let mut tokens = Vec::new();
    {
        let m = LockManager::new(&connect(&url).await, &p).unwrap();
        for _ in 0..3 {
            let g = m.acquire("doc", &opts(5_000, 0)).await.unwrap().unwrap();
            tokens.push(g.fencing_token());
            // The protected storage lives elsewhere and keeps what it saw.
            assert_eq!(
                store
                    .write("doc", "v", g.fencing_token(), None)
                    .await
                    .unwrap(),
                FencedWrite::Written
            );
            assert!(g.release().await.unwrap());
        }
    }
    let mut server = tokio::task::spawn_blocking(move || {
        server.restart().unwrap();
        server
    })
    .await
    .unwrap();
    let m = LockManager::new(&connect(&url).await, &p).unwrap();
    for _ in 0..2 {
        let g = m.acquire("doc", &opts(5_000, 0)).await.unwrap().unwrap();
        tokens.push(g.fencing_token());
        assert_eq!(
            store
                .write("doc", "new", g.fencing_token(), None)
                .await
                .unwrap(),
            FencedWrite::Written,
            "a holder after the restart is not fenced off: {tokens:?}"
        );
        assert!(g.release().await.unwrap());
    }
    assert!(
        tokens.windows(2).all(|w| w[0] < w[1]),
        "fencing tokens must strictly increase across the data loss: {tokens:?}"
    );
    tokio::task::spawn_blocking(move || server.kill().unwrap())
        .await
        .unwrap();
}

/// Waits shorter than it takes to subscribe (a few ms) are common. The
/// manager's one subscription must still come up (in the background) and
/// stay, not be started and torn down again by every short waiting acquire
/// (a new connection each time, and never a wake-up).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn short_waits_still_bring_up_the_one_wake_up_subscription() {
    let redis = shared(Topology::Standalone).await;
    let p = prefix("lock_short_wait_sub");
    let holder = LockManager::new(&redis, &p).unwrap();
    let m = LockManager::new(
        &connect(&shared_url(Topology::Standalone).unwrap()).await,
        &p,
    )
    .unwrap();
    let g = holder
        .acquire("r", &opts(30_000, 0))
        .await
        .unwrap()
        .unwrap();
    let short = LockOptions::builder()
        .ttl(Duration::from_secs(5))
        .wait(Duration::from_micros(200))
        .build()
        .unwrap();
    for _ in 0..5 {
        assert!(m.acquire("r", &short).await.unwrap().is_none());
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let numsub: Vec<fred::types::Value> = redis
            .client()
            .pubsub_numsub(m.wake_channel())
            .await
            .unwrap();
        if numsub.get(1).and_then(|v| v.as_i64()) == Some(1) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the wake-up subscription never came up: {numsub:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // ... and it is the one the next (longer) wait uses: a release wakes it.
    let m2 = m.clone();
    let waiter = tokio::spawn(async move {
        let o = LockOptions::builder()
            .ttl(Duration::from_secs(5))
            .wait(Duration::from_secs(8))
            .poll_backoff(
                Backoff::builder()
                    .initial(Duration::from_secs(20))
                    .max(Duration::from_secs(20))
                    .jitter(false)
                    .build()
                    .unwrap(),
            )
            .build()
            .unwrap();
        m2.acquire("r", &o)
            .await
            .unwrap()
            .map(|g| g.fencing_token())
    });
    let before = m.metrics().contended;
    while m.metrics().contended == before {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(g.release().await.unwrap());
    let got = tokio::time::timeout(DEADLINE, waiter)
        .await
        .unwrap()
        .unwrap();
    assert!(got.is_some());
    let numsub: Vec<fred::types::Value> = redis
        .client()
        .pubsub_numsub(m.wake_channel())
        .await
        .unwrap();
    assert_eq!(
        numsub.get(1).and_then(|v| v.as_i64()),
        Some(1),
        "{numsub:?}"
    );
}

/// A server that stops answering (SIGSTOP) while callers wait, release and
/// take permits: every call ends (with an error, never a grant) within the
/// wait plus about a command timeout; nothing hangs. The tries that timed
/// out are still in the server's input and run when it resumes: their grants
/// (to tokens nobody holds any more) are undone, so the locks and permits
/// are free at once, not held by nobody for a whole TTL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_paused_server_waiting_calls_end_with_errors_never_grants() {
    let server =
        tokio::task::spawn_blocking(|| RedisServer::start_with(ServerOptions::default()).unwrap())
            .await
            .unwrap();
    let url = format!(
        "{}?command_timeout=300ms&connect_timeout=300ms",
        server.url()
    );
    let p = prefix("lock_paused_waits");
    let holder = LockManager::new(&connect(&url).await, &p).unwrap();
    let waiter = LockManager::new(&connect(&url).await, &p).unwrap();
    // Expires during the pause (the server's clock runs on).
    let g = holder.acquire("r", &opts(500, 0)).await.unwrap().unwrap();
    let sem = waiter.semaphore("s", 1).unwrap();
    server.pause().unwrap();
    let bound = Duration::from_secs(6);
    let long = opts(60_000, 1_000);
    let waited = tokio::time::timeout(bound, waiter.acquire("r", &long)).await;
    let other = tokio::time::timeout(bound, waiter.acquire("free", &opts(60_000, 0))).await;
    let permit = tokio::time::timeout(bound, sem.acquire(&long)).await;
    let released = tokio::time::timeout(bound, g.release()).await;
    server.resume().unwrap();
    assert!(matches!(waited, Ok(Err(_))), "{waited:?}");
    assert!(matches!(other, Ok(Err(_))), "{other:?}");
    assert!(matches!(permit, Ok(Err(_))), "{permit:?}");
    assert!(matches!(released, Ok(Err(_))), "{released:?}");
    assert_eq!(waiter.metrics().acquired, 0);
    // Back to normal, and nothing is held by the abandoned tries.
    let o = opts(10_000, 3_000);
    let next = waiter
        .acquire("r", &o)
        .await
        .unwrap()
        .expect("'r' is free after the resume, not held by a timed-out try for 60 s");
    assert!(next.release().await.unwrap());
    let free = waiter
        .acquire("free", &o)
        .await
        .unwrap()
        .expect("'free' is free after the resume");
    assert!(free.release().await.unwrap());
    let p = sem
        .acquire(&o)
        .await
        .unwrap()
        .expect("the permit is free after the resume");
    assert!(p.release().await.unwrap());
}

/// Replica confirmation runs on the manager's own connection. When the
/// Sentinel master goes silent (SIGSTOP: no RST, like a dead host) and is
/// failed over, tries must reach the new master: the manager gives up on the
/// silent connection after a timed-out try and opens a new one (asking the
/// sentinels again). The new master has no replica while the old one stays
/// paused, so the proof is the error: "only 0 of 1 replicas confirmed" (the
/// try ran on a live master) instead of a command timeout on the silent one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_silent_sentinel_master_replica_confirmation_moves_to_the_new_master() {
    let group = tokio::task::spawn_blocking(|| fredkit_testkit::SentinelGroup::start().unwrap())
        .await
        .unwrap();
    let redis = connect(&group.url()).await;
    let m = LockManager::new(&redis, prefix("lock_silent_master")).unwrap();
    let o = LockOptions::builder()
        .ttl(Duration::from_secs(10))
        .replicas(1, Duration::from_millis(500))
        .build()
        .unwrap();
    let g = m
        .acquire("r", &o)
        .await
        .unwrap()
        .expect("one replica confirms");
    assert!(g.release().await.unwrap());

    let old = group.master_addr().unwrap();
    let paused = group.server_by_addr(&old).unwrap();
    paused.pause().unwrap();
    let start = std::time::Instant::now();
    let last = loop {
        let r = m.acquire("r", &o).await;
        match &r {
            Err(e) if e.to_string().contains("replicas confirmed") => break r,
            _ if start.elapsed() > Duration::from_secs(45) => break r,
            _ => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    };
    paused.resume().unwrap();
    let err = last.expect_err("no replica can confirm while the old master is paused");
    assert!(
        err.to_string().contains("only 0 of 1 replicas confirmed"),
        "tries never reached the new master: {err}"
    );
    assert_ne!(group.master_addr().unwrap(), old, "no failover happened");
}

async fn exists(redis: &Redis, key: &str) -> bool {
    let n: i64 = redis.client().exists(key).await.unwrap();
    n == 1
}

/// Garbage in the fencing counter: every try fails with a typed error naming
/// the counter, and leaves no lock behind (the grant validates before it
/// writes). Once the counter is repaired the very next try gets the lock, at
/// once, with a token above every earlier one.
#[rstest]
#[case::standalone(Topology::Standalone)]
#[case::cluster(Topology::Cluster)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_try_on_a_corrupt_counter_fails_typed_leaves_no_lock_and_a_repair_works_at_once(
    #[case] topology: Topology,
) {
    let redis = shared(topology).await;
    let p = prefix("lock_corrupt_counter");
    let m = LockManager::new(&redis, &p).unwrap();
    let lock = m.keys().tagged("r", ["lock"]).unwrap();
    let fence = m.keys().tagged("r", ["fence"]).unwrap();
    let long = opts(60_000, 0);
    let g = m.acquire("r", &long).await.unwrap().unwrap();
    let mut newest = g.fencing_token();
    assert!(g.release().await.unwrap());

    type Plant = fn(&Redis, &str) -> futures::future::BoxFuture<'static, ()>;
    let garbage: Plant = |r, k| {
        let (c, k) = (r.client().clone(), k.to_string());
        Box::pin(async move {
            c.set::<(), _, _>(&k, "garbage", None, None, false)
                .await
                .unwrap()
        })
    };
    let too_big: Plant = |r, k| {
        let (c, k) = (r.client().clone(), k.to_string());
        Box::pin(async move {
            c.set::<(), _, _>(&k, "99999999999999999", None, None, false)
                .await
                .unwrap()
        })
    };
    let a_hash: Plant = |r, k| {
        let (c, k) = (r.client().clone(), k.to_string());
        Box::pin(async move {
            c.del::<(), _>(&k).await.unwrap();
            c.hset::<(), _, _>(&k, ("a", "1")).await.unwrap()
        })
    };
    let cases: [(Plant, &str); 3] = [
        (garbage, "holds \"garbage\", not a fencing counter"),
        (
            too_big,
            "holds \"99999999999999999\", not a fencing counter",
        ),
        (a_hash, "is a hash, not a string"),
    ];
    for (repair_by_delete, (plant, problem)) in [false, true, false].into_iter().zip(cases) {
        plant(&redis, &fence).await;
        // A single try, a waiting try, and the object-safe trait.
        for o in [opts(60_000, 0), opts(60_000, 2_000)] {
            let err = m.acquire("r", &o).await.unwrap_err();
            assert_eq!(err.kind(), ErrorKind::Protocol, "{err}");
            let msg = err.to_string();
            assert!(msg.contains(&format!("'{fence}' {problem}")), "{msg}");
            assert!(
                !exists(&redis, &lock).await,
                "a failed try left the lock key behind"
            );
        }
        let err = DistributedLock::try_acquire(&m, "r", Duration::from_secs(60))
            .await
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Protocol, "{err}");
        assert!(!exists(&redis, &lock).await);

        // Repair: the last token handed out, or no counter at all.
        if repair_by_delete {
            redis.client().del::<(), _>(&fence).await.unwrap();
        } else {
            redis.client().del::<(), _>(&fence).await.unwrap();
            redis
                .client()
                .set::<(), _, _>(&fence, newest.to_string(), None, None, false)
                .await
                .unwrap();
        }
        let g = m
            .acquire("r", &long)
            .await
            .unwrap()
            .expect("the very next try after the repair gets the lock");
        assert!(
            g.fencing_token() > newest,
            "{} <= {newest}",
            g.fencing_token()
        );
        newest = g.fencing_token();
        assert!(g.release().await.unwrap());
    }
    assert_eq!(m.metrics().acquired, 4);
}

/// A lock key of another type, or one without expiry (written by something
/// else), and a semaphore's permits of another type: typed errors naming the
/// key, nothing written, and the lock or semaphore works once the key is
/// deleted.
#[rstest]
#[case::standalone(Topology::Standalone)]
#[case::cluster(Topology::Cluster)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupt_lock_and_permit_keys_are_typed_errors_naming_the_key(#[case] topology: Topology) {
    let redis = shared(topology).await;
    let p = prefix("lock_corrupt_keys");
    let m = LockManager::new(&redis, &p).unwrap();
    let c = redis.client();
    let lock = m.keys().tagged("r", ["lock"]).unwrap();
    let fence = m.keys().tagged("r", ["fence"]).unwrap();

    c.hset::<(), _, _>(&lock, ("a", "1")).await.unwrap();
    for o in [opts(5_000, 0), opts(5_000, 1_000)] {
        let err = m.acquire("r", &o).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Protocol, "{err}");
        assert!(
            err.to_string().contains(&format!("'{lock}' is a hash")),
            "{err}"
        );
    }
    assert!(!exists(&redis, &fence).await, "nothing written");
    c.del::<(), _>(&lock).await.unwrap();
    c.set::<(), _, _>(&lock, "somebody", None, None, false)
        .await
        .unwrap();
    // A waiting try reports it at once instead of spinning until its wait ends.
    let err = m.acquire("r", &opts(5_000, 60_000)).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Protocol, "{err}");
    assert!(
        err.to_string().contains(&format!("'{lock}' has no expiry")),
        "{err}"
    );
    assert!(!exists(&redis, &fence).await, "nothing written");
    c.del::<(), _>(&lock).await.unwrap();
    let g = m.acquire("r", &opts(5_000, 0)).await.unwrap().unwrap();
    assert!(g.release().await.unwrap());

    let sem = m.semaphore("s", 2).unwrap();
    let ks = m.keys().child("sem").unwrap();
    let permits = ks.tagged("s", ["permits"]).unwrap();
    let wait = ks.tagged("s", ["wait"]).unwrap();
    c.set::<(), _, _>(&permits, "garbage", None, None, false)
        .await
        .unwrap();
    for o in [opts(5_000, 0), opts(5_000, 1_000)] {
        let err = sem.acquire(&o).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Protocol, "{err}");
        assert!(
            err.to_string()
                .contains(&format!("'{permits}' is a string")),
            "{err}"
        );
    }
    let err = sem.held().await.unwrap_err();
    assert!(err.to_string().contains(&permits), "{err}");
    assert!(!exists(&redis, &wait).await, "nothing written");
    let v: String = c.get(&permits).await.unwrap();
    assert_eq!(v, "garbage");
    c.del::<(), _>(&permits).await.unwrap();
    let permit = sem.acquire(&opts(5_000, 0)).await.unwrap().unwrap();
    assert_eq!(sem.held().await.unwrap(), 1);
    assert!(permit.release().await.unwrap());
}

/// A fenced write whose token marker was corrupted (by something else) used
/// to fail with a raw Lua error ("attempt to compare number with nil"): it is
/// a typed error naming the key and saying what is wrong, and the value is
/// left alone.
#[rstest]
#[case::standalone(Topology::Standalone)]
#[case::cluster(Topology::Cluster)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fenced_write_on_a_corrupt_marker_is_a_typed_error_naming_the_key(
    #[case] topology: Topology,
) {
    let redis = shared(topology).await;
    let p = prefix("lock_fenced_corrupt");
    let store = FencedStore::new(&redis, &p).unwrap();
    let seen = fredkit_core::KeySpace::new(&p)
        .unwrap()
        .tagged("doc", ["seen"])
        .unwrap();
    let c = redis.client();
    assert_eq!(
        store.write("doc", "v5", 5, None).await.unwrap(),
        FencedWrite::Written
    );
    c.set::<(), _, _>(&seen, "garbage", None, None, false)
        .await
        .unwrap();
    let err = store.write("doc", "v6", 6, None).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Protocol, "{err}");
    assert!(
        err.to_string()
            .contains(&format!("'{seen}' holds \"garbage\", not a fencing token")),
        "{err}"
    );
    c.del::<(), _>(&seen).await.unwrap();
    c.hset::<(), _, _>(&seen, ("a", "1")).await.unwrap();
    let err = store.write("doc", "v6", 6, None).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Protocol, "{err}");
    assert!(
        err.to_string().contains(&format!("'{seen}' is a hash")),
        "{err}"
    );
    assert_eq!(store.read("doc").await.unwrap().unwrap(), "v5".as_bytes());
    // Repaired: the newest token written.
    c.del::<(), _>(&seen).await.unwrap();
    c.set::<(), _, _>(&seen, "5", None, None, false)
        .await
        .unwrap();
    assert_eq!(
        store.write("doc", "v4", 4, None).await.unwrap(),
        FencedWrite::Rejected { newest: 5 }
    );
    assert_eq!(
        store.write("doc", "v6", 6, None).await.unwrap(),
        FencedWrite::Written
    );
    assert_eq!(store.read("doc").await.unwrap().unwrap(), "v6".as_bytes());
}

/// The fencing counter lost (deleted, flushed, evicted) or behind (a
/// failover to a replica that missed the last grants, simulated by setting
/// it back): the next token is still above every token handed out before,
/// because a grant draws max(counter + 1, server clock in µs).
#[rstest]
#[case::standalone(Topology::Standalone)]
#[case::cluster(Topology::Cluster)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fencing_tokens_stay_above_every_earlier_one_when_the_counter_is_lost_or_behind(
    #[case] topology: Topology,
) {
    let redis = shared(topology).await;
    let p = prefix("lock_counter_lost");
    let m = LockManager::new(&redis, &p).unwrap();
    let fence = m.keys().tagged("r", ["fence"]).unwrap();
    let c = redis.client();
    let mut tokens = Vec::new();
    let o = opts(5_000, 0);
    for round in 0..4 {
        for _ in 0..5 {
            let g = m.acquire("r", &o).await.unwrap().unwrap();
            tokens.push(g.fencing_token());
            assert!(g.release().await.unwrap());
        }
        match round {
            // Lost.
            0 => c.del::<(), _>(&fence).await.unwrap(),
            // Behind: a replica that has only the first of these grants.
            1 => {
                let behind = tokens[tokens.len() - 5].to_string();
                c.set::<(), _, _>(&fence, behind, None, None, false)
                    .await
                    .unwrap()
            }
            // Far behind: a counter of an older scheme (INCR from 1).
            2 => c
                .set::<(), _, _>(&fence, "3", None, None, false)
                .await
                .unwrap(),
            _ => {}
        }
    }
    assert!(
        tokens.windows(2).all(|w| w[0] < w[1]),
        "fencing tokens must strictly increase: {tokens:?}"
    );
    let stored: String = c.get(&fence).await.unwrap();
    assert_eq!(stored, tokens[tokens.len() - 1].to_string());
}

/// A replayed grant (fred resends a try whose reply was lost) that finds the
/// counter corrupt takes its own lock back: the failed try leaves no lock.
#[rstest]
#[case::standalone(Topology::Standalone)]
#[case::cluster(Topology::Cluster)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replayed_grant_on_a_corrupt_counter_takes_its_lock_back(#[case] topology: Topology) {
    let redis = shared(topology).await;
    let p = prefix("lock_replay_corrupt");
    let m = LockManager::new(&redis, &p).unwrap();
    let lock = m.keys().tagged("r", ["lock"]).unwrap();
    let fence = m.keys().tagged("r", ["fence"]).unwrap();
    let run = || {
        let (lock, fence) = (lock.clone(), fence.clone());
        let client = redis.client().clone();
        async move {
            ACQUIRE_LUA
                .exec::<_, fred::types::Value, _, _>(
                    &client,
                    vec![lock, fence],
                    vec!["aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa", "60000", "0"],
                )
                .await
                .unwrap()
        }
    };
    let first = run().await.as_i64().unwrap();
    assert!(first >= 1);
    assert!(exists(&redis, &lock).await);
    redis
        .client()
        .set::<(), _, _>(&fence, "garbage", None, None, false)
        .await
        .unwrap();
    let replay = run().await;
    assert!(
        matches!(&replay, fred::types::Value::Array(items) if items.first().and_then(|v| v.as_str()).as_deref() == Some("corrupt")),
        "{replay:?}"
    );
    assert!(
        !exists(&redis, &lock).await,
        "the replay's own lock stays behind"
    );
}

/// How a Sentinel master is replaced in [`grants_across_a_master_switch`].
#[derive(Clone, Copy, Debug)]
enum Switch {
    /// `SENTINEL FAILOVER`: the old master keeps accepting writes from
    /// clients still on it until the sentinels turn it into a replica
    /// (seconds later); those writes are lost.
    Failover,
    /// SIGKILL of the master 300 ms after its replication link broke (the
    /// replica stopped meanwhile, so it cannot reconnect): the grants of
    /// those 300 ms are lost with the master.
    KillMaster,
    /// SIGSTOP of the master, left paused: its connections go silent
    /// without closing and the sentinels fail it over.
    PauseMaster,
}

/// One grant as the client saw it.
#[derive(Clone, Copy, Debug)]
struct Grant {
    sent: std::time::Instant,
    done: std::time::Instant,
    token: u64,
}

/// Several tasks take and release one lock in a loop for seconds while the
/// Sentinel master is replaced. Every grant's token must be greater than the
/// token of every grant that completed before it was asked for, and the only
/// errors allowed are Timeout and Connection (the switch itself).
async fn grants_across_a_master_switch(switch: Switch) {
    let mut group =
        tokio::task::spawn_blocking(|| fredkit_testkit::SentinelGroup::start().unwrap())
            .await
            .unwrap();
    let redis = connect(&group.url()).await;
    let p = prefix("lock_switch");
    let m = LockManager::new(&redis, &p).unwrap();
    let fence = m.keys().tagged("res", ["fence"]).unwrap();
    let grants = Arc::new(std::sync::Mutex::new(Vec::<Grant>::new()));
    let unexpected = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let transient = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let o = opts(1_000, 2_000);
    let mut tasks = Vec::new();
    for _ in 0..4 {
        let (m, o, grants, unexpected, transient, stop) = (
            m.clone(),
            o.clone(),
            grants.clone(),
            unexpected.clone(),
            transient.clone(),
            stop.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let check = |e: fredkit_core::Error| {
                if matches!(e.kind(), ErrorKind::Timeout | ErrorKind::Connection) {
                    transient.fetch_add(1, Ordering::SeqCst);
                } else {
                    unexpected
                        .lock()
                        .unwrap()
                        .push(format!("{:?}: {e}", e.kind()));
                }
            };
            while !stop.load(Ordering::SeqCst) {
                let sent = std::time::Instant::now();
                match m.acquire("res", &o).await {
                    Ok(Some(g)) => {
                        let done = std::time::Instant::now();
                        grants.lock().unwrap().push(Grant {
                            sent,
                            done,
                            token: g.fencing_token(),
                        });
                        if let Err(e) = g.release().await {
                            check(e);
                        }
                    }
                    Ok(None) => {}
                    Err(e) => {
                        check(e);
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                }
            }
        }));
    }
    let count = |grants: &Arc<std::sync::Mutex<Vec<Grant>>>| grants.lock().unwrap().len();
    tokio::time::sleep(Duration::from_secs(4)).await;
    let before = count(&grants);
    assert!(before > 0, "no grants before the switch");

    let old = group.master_addr().unwrap();
    let switched_at = std::time::Instant::now();
    let old_addr = old.clone();
    let group = tokio::task::spawn_blocking(move || {
        let old = old_addr;
        match switch {
            Switch::Failover => {
                group.failover().unwrap();
            }
            Switch::PauseMaster => {
                group.server_by_addr(&old).unwrap().pause().unwrap();
                let deadline = std::time::Instant::now() + Duration::from_secs(30);
                while group.master_addr().ok().as_deref() == Some(old.as_str()) {
                    assert!(
                        std::time::Instant::now() < deadline,
                        "the sentinels did not fail over"
                    );
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
            Switch::KillMaster => {
                let master = group
                    .servers()
                    .iter()
                    .position(|s| s.addr() == old)
                    .unwrap();
                let replica = 1 - master;
                // The replication link breaks while the replica is stopped
                // (so it cannot reconnect): the grants of the next 300 ms
                // never leave the master, which then dies.
                group.servers()[replica].pause().unwrap();
                let killed = group.servers()[master]
                    .command(&["CLIENT", "KILL", "TYPE", "replica"])
                    .unwrap();
                assert_eq!(killed.as_int(), Some(1), "{killed:?}");
                std::thread::sleep(Duration::from_millis(300));
                group.servers_mut()[master].kill().unwrap();
                group.servers()[replica].resume().unwrap();
                let deadline = std::time::Instant::now() + Duration::from_secs(30);
                while group.master_addr().ok().as_deref() == Some(old.as_str()) {
                    assert!(
                        std::time::Instant::now() < deadline,
                        "the sentinels did not fail over"
                    );
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
        }
        group
    })
    .await
    .unwrap();
    let new = group.master_addr().unwrap();
    assert_ne!(new, old);
    // Grants go on until the client has moved to the new master and made
    // grants there: the new master's counter (the last token it granted) is
    // at or above every token recorded, including those the old master
    // granted and lost.
    let deadline = std::time::Instant::now() + Duration::from_secs(40);
    let new_master_counter = |group: &fredkit_testkit::SentinelGroup| {
        group
            .server_by_addr(&new)
            .and_then(|s| s.command(&["GET", &fence]).ok())
            .and_then(|r| r.as_str().and_then(|s| s.parse::<u64>().ok()))
    };
    let highest_recorded = |grants: &Arc<std::sync::Mutex<Vec<Grant>>>| {
        grants.lock().unwrap().iter().map(|g| g.token).max()
    };
    loop {
        let recorded = highest_recorded(&grants);
        let on_new = new_master_counter(&group);
        let after = grants
            .lock()
            .unwrap()
            .iter()
            .filter(|g| g.sent > switched_at)
            .count();
        if after >= 20 && on_new.is_some() && on_new >= recorded {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the client never granted on the new master ({after} grants after the switch, highest token {recorded:?}, new master's counter {on_new:?})"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.store(true, Ordering::SeqCst);
    for t in tasks {
        tokio::time::timeout(DEADLINE, t).await.unwrap().unwrap();
    }
    let (recorded, on_new) = (highest_recorded(&grants), new_master_counter(&group));
    assert!(
        on_new >= recorded,
        "the last grants did not run on the new master: highest token {recorded:?}, new master's counter {on_new:?}"
    );
    let mut grants = grants.lock().unwrap().clone();
    let unexpected = unexpected.lock().unwrap().clone();
    assert!(
        unexpected.is_empty(),
        "errors other than Timeout/Connection: {unexpected:?}"
    );
    // Every grant's token is above every token granted before it was asked
    // for (real-time order: completed before it was sent).
    grants.sort_by_key(|g| g.done);
    let mut highest = Vec::with_capacity(grants.len());
    let mut max = 0;
    for g in &grants {
        max = max.max(g.token);
        highest.push(max);
    }
    let mut backwards = Vec::new();
    for g in &grants {
        let earlier = grants.partition_point(|a| a.done < g.sent);
        if earlier > 0 && g.token <= highest[earlier - 1] {
            backwards.push((highest[earlier - 1], g.token));
        }
    }
    eprintln!(
        "{switch:?}: {} grants ({before} before the switch), {} timeout/connection errors, {} went backwards",
        grants.len(),
        transient.load(Ordering::SeqCst),
        backwards.len()
    );
    assert!(
        backwards.is_empty(),
        "{} grants got a token at or below one granted before them (earlier, later): {:?}",
        backwards.len(),
        &backwards[..backwards.len().min(10)]
    );
    tokio::task::spawn_blocking(move || drop(group))
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_sentinel_failover_fencing_tokens_never_go_backwards() {
    grants_across_a_master_switch(Switch::Failover).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_sentinel_master_kill_fencing_tokens_never_go_backwards() {
    grants_across_a_master_switch(Switch::KillMaster).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_sentinel_master_paused_fencing_tokens_never_go_backwards() {
    grants_across_a_master_switch(Switch::PauseMaster).await;
}

/// `acquire_all`: 8 tasks over two managers (two connections, like two
/// processes) lock overlapping sets of 3 of 6 SKUs, each set given in an
/// order of its own (some the reverse of others: taken in the given order,
/// they deadlock until their wait runs out), 25 times each. Every grant is
/// checked against a shared in-memory owner map (no SKU granted twice at
/// once), each SKU's fencing tokens strictly increase, and each SKU's
/// counter (read, yield, write under the set) ends at exactly the number of
/// grants that included it.
#[rstest]
#[case::standalone(Topology::Standalone)]
#[case::cluster(Topology::Cluster)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acquire_all_8_tasks_overlapping_sku_sets_no_deadlock_no_double_grant_exact_counts(
    #[case] topology: Topology,
) {
    use std::collections::HashMap;
    use std::sync::Mutex;

    const SKUS: usize = 6;
    const ROUNDS: usize = 25;
    let url = shared_url(topology).unwrap();
    let sep = if url.contains('?') { '&' } else { '?' };
    let url = format!("{url}{sep}command_timeout=5s");
    let p = prefix("lock_acquire_all");
    let managers = [
        LockManager::new(&connect(&url).await, &p).unwrap(),
        LockManager::new(&connect(&url).await, &p).unwrap(),
    ];
    let counters = connect(&url).await;
    let sku = |i: usize| format!("sku{}", i % SKUS);
    // Task t locks {t, t+1, t+3} (mod 6), given forwards for even tasks and
    // backwards for odd ones.
    let sets: Vec<Vec<String>> = (0..8)
        .map(|t| {
            let mut s = vec![sku(t), sku(t + 1), sku(t + 3)];
            if t % 2 == 1 {
                s.reverse();
            }
            s
        })
        .collect();
    let owners: Arc<Mutex<HashMap<String, usize>>> = Arc::default();
    let last_token: Arc<Mutex<HashMap<String, u64>>> = Arc::default();
    let o = opts(20_000, 60_000);
    let mut tasks = Vec::new();
    for (t, set) in sets.iter().cloned().enumerate() {
        let m = managers[t % 2].clone();
        let (owners, last_token, redis, o, p) = (
            owners.clone(),
            last_token.clone(),
            counters.clone(),
            o.clone(),
            p.clone(),
        );
        tasks.push(tokio::spawn(async move {
            for _ in 0..ROUNDS {
                let locks = m
                    .acquire_all(&set, &o)
                    .await
                    .unwrap()
                    .expect("waited 60 s for the set");
                assert_eq!(locks.len(), 3);
                {
                    let mut owners = owners.lock().unwrap();
                    let mut last = last_token.lock().unwrap();
                    for s in &set {
                        if let Some(other) = owners.insert(s.clone(), t) {
                            panic!("{s} granted to task {t} while task {other} held it");
                        }
                        let token = locks.fencing_token(s).unwrap();
                        let before = last.insert(s.clone(), token).unwrap_or(0);
                        assert!(token > before, "{s}: token {token} after {before}");
                    }
                }
                for s in &set {
                    let key = format!("{p}:count:{s}");
                    let v: Option<i64> = redis.client().get(&key).await.unwrap();
                    tokio::task::yield_now().await;
                    redis
                        .client()
                        .set::<(), _, _>(&key, v.unwrap_or(0) + 1, None, None, false)
                        .await
                        .unwrap();
                }
                {
                    let mut owners = owners.lock().unwrap();
                    for s in &set {
                        assert_eq!(owners.remove(s), Some(t));
                    }
                }
                assert!(
                    locks.release().await.unwrap(),
                    "a lock expired under the holder"
                );
            }
        }));
    }
    for t in tasks {
        tokio::time::timeout(DEADLINE * 4, t)
            .await
            .expect("deadlock: a task did not finish")
            .unwrap();
    }
    for i in 0..SKUS {
        let s = sku(i);
        let expected = sets.iter().filter(|set| set.contains(&s)).count() * ROUNDS;
        let v: i64 = counters
            .client()
            .get(format!("{p}:count:{s}"))
            .await
            .unwrap();
        assert_eq!(v, expected as i64, "{s}");
    }
}

/// `acquire_all` takes all or nothing: with one resource busy (held by
/// another manager) it returns `None` — at once, and after waiting — and
/// leaves the others free; once that one is free it takes the set (sorted,
/// duplicates once, a fencing token per resource above every earlier one)
/// and `release` frees every lock. An empty request or name is refused.
#[rstest]
#[case::standalone(Topology::Standalone)]
#[case::cluster(Topology::Cluster)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acquire_all_is_all_or_nothing_and_releases_together(#[case] topology: Topology) {
    let redis = shared(topology).await;
    let p = prefix("lock_acquire_all_aon");
    let a = LockManager::new(&redis, &p).unwrap();
    let b = LockManager::new(&shared(topology).await, &p).unwrap();
    let once = opts(10_000, 0);
    let mut before = std::collections::HashMap::new();
    for r in ["a", "b", "c"] {
        let g = b.acquire(r, &once).await.unwrap().unwrap();
        before.insert(r, g.fencing_token());
        assert!(g.release().await.unwrap());
    }
    let held = b.acquire("b", &once).await.unwrap().unwrap();
    for wait_ms in [0, 300] {
        assert!(a
            .acquire_all(&["c", "a", "b"], &opts(10_000, wait_ms))
            .await
            .unwrap()
            .is_none());
        for r in ["a", "c"] {
            let g = b.acquire(r, &once).await.unwrap().unwrap_or_else(|| {
                panic!("{r} left locked by a failed acquire_all (wait {wait_ms} ms)")
            });
            assert!(g.release().await.unwrap());
        }
    }
    assert!(held.release().await.unwrap());

    let set = a
        .acquire_all(&["c", "a", "b", "a"], &opts(10_000, 1_000))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(set.resources().collect::<Vec<_>>(), ["a", "b", "c"]);
    for r in ["a", "b", "c"] {
        assert!(set.fencing_token(r).unwrap() > before[r], "{r}");
        assert!(b.acquire(r, &once).await.unwrap().is_none(), "{r} is held");
    }
    assert!(!set.is_lost());
    assert!(set.release().await.unwrap());
    for r in ["a", "b", "c"] {
        let g = b.acquire(r, &once).await.unwrap().expect("released");
        assert!(g.release().await.unwrap());
    }

    let none: [&str; 0] = [];
    for bad in [&none[..], &["a", ""][..]] {
        let e = a.acquire_all(bad, &once).await.unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidInput, "{e}");
    }
}

#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
struct Stock {
    sku: String,
    qty: u32,
    note: Option<String>,
}

fn stock(qty: u32) -> Stock {
    Stock {
        sku: "sku-42".into(),
        qty,
        note: (qty % 2 == 0).then(|| format!("even {qty}")),
    }
}

/// A typed `FencedStore<Stock>` (MessagePack through fredkit-core's codec):
/// a seed is written once and never replaces a value; a newer holder's
/// write wins, a stale holder's is rejected naming the newest token; values
/// come back typed; garbage in the value is a Codec error naming the key;
/// the raw store sees the same bytes.
#[rstest]
#[case::standalone(Topology::Standalone)]
#[case::cluster(Topology::Cluster)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn typed_fenced_store_seeds_once_rejects_stale_holders_and_reads_typed(
    #[case] topology: Topology,
) {
    let redis = shared(topology).await;
    let p = prefix("lock_fenced_typed");
    let m = LockManager::new(&redis, &p).unwrap();
    let store: FencedStore<Stock> = FencedStore::typed(&redis, &p).unwrap();

    assert_eq!(store.read("doc").await.unwrap(), None);
    assert!(store.seed("doc", &stock(100), None).await.unwrap());
    assert!(
        !store.seed("doc", &stock(1), None).await.unwrap(),
        "seeded twice"
    );
    assert_eq!(store.read("doc").await.unwrap(), Some(stock(100)));

    let o = opts(10_000, 0);
    let old = m.acquire("doc", &o).await.unwrap().unwrap();
    let t_old = old.fencing_token();
    drop(old);
    tokio::time::sleep(Duration::from_millis(50)).await; // background release
    let new = m
        .acquire("doc", &opts(10_000, 5_000))
        .await
        .unwrap()
        .unwrap();
    let t_new = new.fencing_token();
    assert!(t_new > t_old);
    assert_eq!(
        store.write("doc", &stock(7), t_new, None).await.unwrap(),
        FencedWrite::Written
    );
    assert_eq!(
        store.write("doc", &stock(8), t_old, None).await.unwrap(),
        FencedWrite::Rejected { newest: t_new }
    );
    assert_eq!(store.read("doc").await.unwrap(), Some(stock(7)));
    assert!(!store.seed("doc", &stock(1), None).await.unwrap());
    assert_eq!(store.read("doc").await.unwrap(), Some(stock(7)));
    assert!(new.release().await.unwrap());

    // The raw store reads the same bytes.
    let raw = FencedStore::new(&redis, &p).unwrap();
    let bytes = raw.read("doc").await.unwrap().unwrap();
    let decoded: Stock = fredkit_core::Codec::decode(&fredkit_core::MsgPack, &bytes).unwrap();
    assert_eq!(decoded, stock(7));

    // Garbage where a Stock should be.
    let key = m.keys().tagged("doc", ["value"]).unwrap();
    redis
        .client()
        .set::<(), _, _>(&key, "\u{00c1}not msgpack", None, None, false)
        .await
        .unwrap();
    let e = store.read("doc").await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Codec, "{e}");
    assert!(e.to_string().contains(&key), "{e}");
}

/// `FencedCounter`: seeded once; 8 tasks add 50 times each with the same
/// token (no lock at all) and the count is exact and every answer distinct
/// (one script per change: no lost update); a stale token changes nothing;
/// `set` is a fenced write; a corrupt count is a Protocol error naming the
/// key, an overflow a Script error naming it, both writing nothing.
#[rstest]
#[case::standalone(Topology::Standalone)]
#[case::cluster(Topology::Cluster)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fenced_counter_adds_atomically_rejects_stale_tokens_and_seeds_once(
    #[case] topology: Topology,
) {
    let url = shared_url(topology).unwrap();
    let sep = if url.contains('?') { '&' } else { '?' };
    let redis = connect(&format!("{url}{sep}command_timeout=5s")).await;
    let p = prefix("lock_fenced_counter");
    let counter = FencedCounter::new(&redis, &p).unwrap();
    assert_eq!(counter.get("sku").await.unwrap(), None);
    assert!(counter.seed("sku", 1_000, None).await.unwrap());
    assert!(!counter.seed("sku", 5, None).await.unwrap(), "seeded twice");
    assert_eq!(counter.get("sku").await.unwrap(), Some(1_000));

    let token = 1_000_000;
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let c = counter.clone();
        tasks.push(tokio::spawn(async move {
            let mut seen = Vec::new();
            for _ in 0..50 {
                match c.incr_by("sku", -1, token, None).await.unwrap() {
                    FencedIncr::Written { value } => seen.push(value),
                    other => panic!("{other:?}"),
                }
            }
            seen
        }));
    }
    let mut values = Vec::new();
    for t in tasks {
        values.extend(tokio::time::timeout(DEADLINE, t).await.unwrap().unwrap());
    }
    values.sort_unstable();
    assert_eq!(
        values,
        (600..1_000).collect::<Vec<i64>>(),
        "lost or doubled updates"
    );
    assert_eq!(counter.get("sku").await.unwrap(), Some(600));

    assert_eq!(
        counter.incr_by("sku", 5, token + 1, None).await.unwrap(),
        FencedIncr::Written { value: 605 }
    );
    assert_eq!(
        counter.incr_by("sku", 5, token, None).await.unwrap(),
        FencedIncr::Rejected { newest: token + 1 }
    );
    assert_eq!(
        counter.set("sku", 7, token, None).await.unwrap(),
        FencedWrite::Rejected { newest: token + 1 }
    );
    assert_eq!(
        counter.set("sku", 7, token + 1, None).await.unwrap(),
        FencedWrite::Written
    );
    assert_eq!(counter.get("sku").await.unwrap(), Some(7));

    // Overflow: refused, nothing written.
    assert_eq!(
        counter.set("sku", i64::MAX, token + 2, None).await.unwrap(),
        FencedWrite::Written
    );
    let e = counter
        .incr_by("sku", 1, token + 3, None)
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Script, "{e}");
    let key = KeySpace::new(&p).unwrap().tagged("sku", ["count"]).unwrap();
    assert!(e.to_string().contains(&key), "{e}");
    assert_eq!(counter.get("sku").await.unwrap(), Some(i64::MAX));
    assert_eq!(
        counter.incr_by("sku", -1, token + 2, None).await.unwrap(),
        FencedIncr::Written {
            value: i64::MAX - 1
        },
        "the refused change did not record its token"
    );

    // Garbage in the count.
    redis
        .client()
        .set::<(), _, _>(&key, "12abc", None, None, false)
        .await
        .unwrap();
    for e in [
        counter
            .incr_by("sku", 1, token + 9, None)
            .await
            .unwrap_err(),
        counter.get("sku").await.unwrap_err(),
    ] {
        assert_eq!(e.kind(), ErrorKind::Protocol, "{e}");
        assert!(e.to_string().contains(&key), "{e}");
    }
    let raw: String = redis.client().get(&key).await.unwrap();
    assert_eq!(raw, "12abc", "nothing written");
    assert_eq!(
        counter
            .incr_by("sku", 1, token + 2, None)
            .await
            .unwrap_err()
            .kind(),
        ErrorKind::Protocol
    );
}
