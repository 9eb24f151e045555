//! fredkit-jobs against real servers, standalone and a 3-master cluster.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use fred::prelude::*;
use fredkit_conn::Redis;
use fredkit_jobs::{
    ErrorKind, Job, JobBackoff, JobOptions, JobState, Keep, Queue, Scheduler, Worker, WorkerConfig,
};
use fredkit_testkit::{connect, shared_url, unique_prefix, Topology};
use rstest::rstest;

async fn redis(topology: Topology) -> Redis {
    connect(&shared_url(topology).unwrap()).await.unwrap()
}

/// Polls `f` every 20 ms until it is true, at most `secs` seconds.
async fn eventually<F, Fut>(secs: u64, mut f: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let end = tokio::time::Instant::now() + Duration::from_secs(secs);
    while tokio::time::Instant::now() < end {
        if f().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    false
}

async fn server_ms(r: &Redis) -> i64 {
    let v: Vec<String> = r
        .client()
        .custom(fred::cmd!("TIME"), Vec::<String>::new())
        .await
        .unwrap();
    v[0].parse::<i64>().unwrap() * 1000 + v[1].parse::<i64>().unwrap() / 1000
}

fn fast() -> WorkerConfig {
    WorkerConfig::new().block(Duration::from_millis(500))
}

/// Jobs run, complete with their result; counts, job(id) and unknown ids.
#[rstest]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_complete_with_their_result(
    #[values(Topology::Standalone, Topology::Cluster)] topology: Topology,
) {
    let r = redis(topology).await;
    let q: Queue<u64> = Queue::new(&r, unique_prefix("jobs_complete"), "q").unwrap();
    for i in 0..50u64 {
        q.enqueue_with(&i, JobOptions::new().id(format!("j:{i}")))
            .await
            .unwrap();
    }
    let bulk: Vec<(u64, JobOptions)> = (50..100u64)
        .map(|i| (i, JobOptions::new().id(format!("j:{i}"))))
        .collect();
    let res = q
        .enqueue_bulk(bulk.iter().map(|(j, o)| (j, o.clone())))
        .await;
    assert!(res.iter().all(|r| r.as_ref().unwrap().added));
    let w = Worker::start(&q, fast().concurrency(8), |job: Job<u64>| async move {
        job.progress(50).await.unwrap();
        Ok::<_, String>(job.payload * 2)
    })
    .unwrap();
    assert!(eventually(20, || async { q.counts().await.unwrap().completed == 100 }).await);
    let report = w.shutdown().await;
    assert_eq!(report.metrics.completed, 100);
    let c = q.counts().await.unwrap();
    assert_eq!(
        (c.waiting, c.active, c.delayed, c.failed, c.dead),
        (0, 0, 0, 0, 0)
    );
    let info = q.job::<u64>("j:7").await.unwrap().unwrap();
    assert_eq!(info.state, JobState::Completed);
    assert_eq!(info.result, Some(14));
    assert_eq!(info.payload, Ok(7));
    assert_eq!(info.attempts, 1);
    assert_eq!(info.attempt_starts.len(), 1);
    assert_eq!(info.progress, Some(50));
    assert!(q.job::<u64>("no-such-job").await.unwrap().is_none());
}

fn raw(prefix: &str, q: &str, part: &str) -> String {
    format!("{}:{{{q}}}:{part}", prefix.trim_end_matches(':'))
}

/// The same id twice is one job; 20 concurrent enqueues of one id add one
/// job, and it runs once.
#[rstest]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn same_id_is_one_job(#[values(Topology::Standalone, Topology::Cluster)] topology: Topology) {
    let r = redis(topology).await;
    let q: Queue<String> = Queue::new(&r, unique_prefix("jobs_same_id"), "q").unwrap();
    let a = q
        .enqueue_with(&"a".into(), JobOptions::new().id("invoice-1"))
        .await
        .unwrap();
    let b = q
        .enqueue_with(&"b".into(), JobOptions::new().id("invoice-1"))
        .await
        .unwrap();
    assert!(a.added && !b.added);
    assert_eq!(b.state, JobState::Waiting);
    let mut tasks = Vec::new();
    for i in 0..20 {
        let q = q.clone();
        tasks.push(tokio::spawn(async move {
            q.enqueue_with(&format!("c{i}"), JobOptions::new().id("invoice-2"))
                .await
                .unwrap()
                .added
        }));
    }
    let mut added = 0;
    for t in tasks {
        added += usize::from(t.await.unwrap());
    }
    assert_eq!(added, 1);
    assert_eq!(q.counts().await.unwrap().waiting, 2);
    let runs = Arc::new(Mutex::new(Vec::new()));
    let seen = Arc::clone(&runs);
    let w = Worker::start(&q, fast(), move |job: Job<String>| {
        seen.lock().unwrap().push(job.id.clone());
        async { Ok::<_, String>(()) }
    })
    .unwrap();
    assert!(eventually(20, || async { q.counts().await.unwrap().completed == 2 }).await);
    // Enqueueing a completed id again does nothing either.
    assert!(
        !q.enqueue_with(&"d".into(), JobOptions::new().id("invoice-1"))
            .await
            .unwrap()
            .added
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    w.shutdown().await;
    let mut runs = runs.lock().unwrap().clone();
    runs.sort();
    assert_eq!(runs, vec!["invoice-1".to_string(), "invoice-2".to_string()]);
}

/// Delayed jobs never start before their due time by the server's clock;
/// with one worker a higher priority starts first, equal ones in order.
#[rstest]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delayed_by_server_clock_and_priority_order(
    #[values(Topology::Standalone, Topology::Cluster)] topology: Topology,
) {
    let r = redis(topology).await;
    let q: Queue<u32> = Queue::new(&r, unique_prefix("jobs_delay_prio"), "q").unwrap();
    let starts = Arc::new(Mutex::new(Vec::<(u32, i64)>::new()));
    let seen = Arc::clone(&starts);
    let rr = r.clone();
    let w = Worker::start(&q, fast().concurrency(1), move |job: Job<u32>| {
        let seen = Arc::clone(&seen);
        let rr = rr.clone();
        async move {
            let now = server_ms(&rr).await;
            seen.lock().unwrap().push((job.payload, now));
            Ok::<_, String>(())
        }
    })
    .unwrap();
    // Delayed: 300 and 600 ms.
    let before = server_ms(&r).await;
    q.enqueue_with(
        &300,
        JobOptions::new()
            .id("d300")
            .delay(Duration::from_millis(300)),
    )
    .await
    .unwrap();
    q.enqueue_with(
        &600,
        JobOptions::new()
            .id("d600")
            .delay(Duration::from_millis(600)),
    )
    .await
    .unwrap();
    assert_eq!(
        q.job::<()>("d300").await.unwrap().unwrap().state,
        JobState::Delayed
    );
    assert!(eventually(20, || async { q.counts().await.unwrap().completed == 2 }).await);
    for (payload, started) in starts.lock().unwrap().iter() {
        assert!(
            started - before >= i64::from(*payload),
            "job delayed {payload} ms started {} ms after the enqueue",
            started - before
        );
    }
    for id in ["d300", "d600"] {
        let info = q.job::<()>(id).await.unwrap().unwrap();
        let due = info.due_at;
        assert!(info.attempt_starts[0] >= due, "{id} started before due");
        assert_eq!(
            due.duration_since(info.created_at).unwrap().as_millis(),
            if id == "d300" { 300 } else { 600 }
        );
    }
    starts.lock().unwrap().clear();

    // Priority: paused while they are enqueued, then one worker.
    q.pause().await.unwrap();
    for i in 0..5u32 {
        q.enqueue_with(&i, JobOptions::new()).await.unwrap();
    }
    q.enqueue_with(&99, JobOptions::new().priority(10))
        .await
        .unwrap();
    q.enqueue_with(&50, JobOptions::new().priority(5))
        .await
        .unwrap();
    q.resume().await.unwrap();
    assert!(eventually(20, || async { q.counts().await.unwrap().completed == 9 }).await);
    w.shutdown().await;
    let order: Vec<u32> = starts.lock().unwrap().iter().map(|(p, _)| *p).collect();
    assert_eq!(order, vec![99, 50, 0, 1, 2, 3, 4]);
}

/// Retries follow the backoff (server-clock gaps at least the delay); after
/// max attempts the job is dead with every attempt's error; retry brings it
/// back once. An undecodable payload is dead at once.
#[rstest]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_backoff_dead_and_retry_once(
    #[values(Topology::Standalone, Topology::Cluster)] topology: Topology,
) {
    let r = redis(topology).await;
    let prefix = unique_prefix("jobs_retry");
    let q: Queue<u32> = Queue::new(&r, &prefix, "q").unwrap();
    let calls = Arc::new(Mutex::new(0u32));
    let succeed = Arc::new(Mutex::new(false));
    let (c, s) = (Arc::clone(&calls), Arc::clone(&succeed));
    let w = Worker::start(&q, fast(), move |job: Job<u32>| {
        *c.lock().unwrap() += 1;
        let ok = *s.lock().unwrap();
        async move {
            if ok {
                Ok(job.payload)
            } else {
                Err(format!("boom {}", job.attempt))
            }
        }
    })
    .unwrap();
    let delay = Duration::from_millis(250);
    q.enqueue_with(
        &7,
        JobOptions::new()
            .id("r")
            .max_attempts(3)
            .backoff(JobBackoff::Fixed(delay)),
    )
    .await
    .unwrap();
    assert!(eventually(20, || async { q.counts().await.unwrap().dead == 1 }).await);
    let info = q.job::<u32>("r").await.unwrap().unwrap();
    assert_eq!(info.state, JobState::Dead);
    assert_eq!(info.attempts, 3);
    let errors: Vec<&str> = info.errors.iter().map(|e| e.message.as_str()).collect();
    assert_eq!(errors, vec!["boom 1", "boom 2", "boom 3"]);
    assert_eq!(info.attempt_starts.len(), 3);
    for pair in info.attempt_starts.windows(2) {
        let gap = pair[1].duration_since(pair[0]).unwrap();
        assert!(gap >= delay, "retry gap {gap:?} < {delay:?}");
    }
    assert_eq!(*calls.lock().unwrap(), 3);

    *succeed.lock().unwrap() = true;
    assert!(q.retry("r").await.unwrap());
    assert!(!q.retry("r").await.unwrap());
    assert!(eventually(20, || async { q.counts().await.unwrap().completed == 1 }).await);
    let info = q.job::<u32>("r").await.unwrap().unwrap();
    assert_eq!(
        (info.state, info.result, info.errors.len()),
        (JobState::Completed, Some(7), 3)
    );
    assert_eq!(*calls.lock().unwrap(), 4);

    // Undecodable: a String payload on a u32 queue.
    let strings: Queue<String> = Queue::new(&r, &prefix, "q").unwrap();
    strings
        .enqueue_with(
            &"not a number".into(),
            JobOptions::new().id("bad").max_attempts(5),
        )
        .await
        .unwrap();
    assert!(eventually(20, || async { q.counts().await.unwrap().dead == 1 }).await);
    let report = w.shutdown().await;
    let info = strings.job::<()>("bad").await.unwrap().unwrap();
    assert_eq!((info.state, info.attempts), (JobState::Dead, 1));
    assert!(
        info.errors[0].message.contains("cannot be decoded"),
        "{:?}",
        info.errors
    );
    assert_eq!(report.metrics.decode_errors, 1);
    assert_eq!(*calls.lock().unwrap(), 4);
}

/// A recurring job with three schedulers: every tick enqueued exactly once,
/// no tick skipped; an invalid cron expression is a config error naming it.
#[rstest]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recurring_three_schedulers_each_tick_once(
    #[values(Topology::Standalone, Topology::Cluster)] topology: Topology,
) {
    let r = redis(topology).await;
    let prefix = unique_prefix("jobs_recurring");
    let q: Queue<String> = Queue::new(&r, &prefix, "q").unwrap();
    let e = Scheduler::new(&q)
        .cron("bad", "61 * * * *", &"x".into())
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Config);
    assert!(e.to_string().contains("61 * * * *"), "{e}");
    assert!(Scheduler::new(&q)
        .cron("ok", "*/5 * * * *", &"x".into())
        .is_ok());

    let interval = Duration::from_millis(100);
    let mut handles = Vec::new();
    for _ in 0..3 {
        let other = redis(topology).await;
        let q2: Queue<String> = Queue::new(&other, &prefix, "q").unwrap();
        handles.push(
            Scheduler::new(&q2)
                .every("tick", interval, &"t".into())
                .unwrap()
                .start(),
        );
    }
    assert!(
        eventually(20, || async {
            let c = q.counts().await.unwrap();
            c.waiting + c.delayed >= 20
        })
        .await
    );
    let mut total = 0;
    for h in handles {
        total += h.shutdown().await;
    }
    let mut ticks: Vec<i64> = Vec::new();
    for set in ["wait", "delayed"] {
        let members: Vec<String> = r
            .client()
            .zrange(raw(&prefix, "q", set), 0, -1, None, false, None, false)
            .await
            .unwrap();
        for m in members {
            ticks.push(m.strip_prefix("tick%3A").unwrap().parse().unwrap());
        }
    }
    ticks.sort_unstable();
    assert!(ticks.len() >= 20);
    assert_eq!(
        total,
        ticks.len() as u64,
        "enqueues reported by the schedulers vs jobs"
    );
    for pair in ticks.windows(2) {
        assert_eq!(pair[1] - pair[0], 100, "ticks {ticks:?}");
    }
    assert!(ticks.iter().all(|t| t % 100 == 0));
}

/// Pause stops new starts at once and loses nothing; resume continues.
#[rstest]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pause_stops_starts_and_resume_continues(
    #[values(Topology::Standalone, Topology::Cluster)] topology: Topology,
) {
    let r = redis(topology).await;
    let q: Queue<u32> = Queue::new(&r, unique_prefix("jobs_pause"), "q").unwrap();
    let ran = Arc::new(Mutex::new(0u32));
    let c = Arc::clone(&ran);
    let w = Worker::start(
        &q,
        WorkerConfig::new().block(Duration::from_millis(200)),
        move |_job: Job<u32>| {
            *c.lock().unwrap() += 1;
            async { Ok::<_, String>(()) }
        },
    )
    .unwrap();
    q.enqueue(&1).await.unwrap();
    assert!(eventually(20, || async { q.counts().await.unwrap().completed == 1 }).await);
    q.pause().await.unwrap();
    assert!(q.counts().await.unwrap().paused);
    for i in 0..20 {
        q.enqueue(&i).await.unwrap();
    }
    q.enqueue_with(&99, JobOptions::new().delay(Duration::from_millis(100)))
        .await
        .unwrap();
    // Several block cycles: nothing starts.
    // Several block cycles (the delayed job moves to waiting meanwhile):
    // nothing starts.
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert!(eventually(10, || async { q.counts().await.unwrap().waiting == 21 }).await);
    assert_eq!(*ran.lock().unwrap(), 1);
    let c = q.counts().await.unwrap();
    assert_eq!((c.waiting, c.active, c.completed), (21, 0, 1));
    q.resume().await.unwrap();
    assert!(eventually(20, || async { q.counts().await.unwrap().completed == 22 }).await);
    w.shutdown().await;
    assert_eq!(*ran.lock().unwrap(), 22);
}

/// Admin: remove, drain, clean; a graceful shutdown finishes in-flight
/// handlers and reports them.
#[rstest]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_and_graceful_shutdown(
    #[values(Topology::Standalone, Topology::Cluster)] topology: Topology,
) {
    let r = redis(topology).await;
    let q: Queue<u32> = Queue::new(&r, unique_prefix("jobs_admin"), "q").unwrap();
    for i in 0..10u32 {
        q.enqueue_with(&i, JobOptions::new().id(format!("w{i}")))
            .await
            .unwrap();
    }
    q.enqueue_with(
        &0,
        JobOptions::new().id("later").delay(Duration::from_secs(60)),
    )
    .await
    .unwrap();
    assert!(q.remove("w0").await.unwrap());
    assert!(!q.remove("w0").await.unwrap());
    assert_eq!(q.drain().await.unwrap(), 10);
    let c = q.counts().await.unwrap();
    assert_eq!((c.waiting, c.delayed), (0, 0));
    assert!(q.job::<()>("w1").await.unwrap().is_none());

    let w = Worker::start(
        &q,
        fast()
            .concurrency(4)
            .shutdown_timeout(Duration::from_secs(10)),
        |job: Job<u32>| async move {
            tokio::time::sleep(Duration::from_millis(1000)).await;
            Ok::<_, String>(job.payload)
        },
    )
    .unwrap();
    // Paused while enqueued: one claim starts all four.
    q.pause().await.unwrap();
    for i in 0..4u32 {
        q.enqueue(&i).await.unwrap();
    }
    q.resume().await.unwrap();
    assert!(eventually(20, || async { q.counts().await.unwrap().active == 4 }).await);
    let report = w.shutdown().await;
    assert_eq!((report.in_flight_at_stop, report.abandoned), (4, 0));
    assert_eq!(report.metrics.completed, 4);
    assert_eq!(q.counts().await.unwrap().completed, 4);
    assert_eq!(q.clean(false, Duration::ZERO).await.unwrap(), 4);
    assert_eq!(q.counts().await.unwrap().completed, 0);
}

/// Garbage under the queue's keys: typed errors or dead jobs, never a panic.
#[rstest]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_under_keys_gives_typed_errors(
    #[values(Topology::Standalone, Topology::Cluster)] topology: Topology,
) {
    let r = redis(topology).await;
    let prefix = unique_prefix("jobs_garbage");
    let q: Queue<u32> = Queue::new(&r, &prefix, "q").unwrap();
    let c = r.client();
    // A string where the wait set should be.
    let _: () = c
        .set(raw(&prefix, "q", "wait"), "garbage", None, None, false)
        .await
        .unwrap();
    let e = q.enqueue(&1).await.unwrap_err();
    assert!(
        matches!(e.kind(), ErrorKind::Script | ErrorKind::Protocol),
        "{e}"
    );
    assert!(q.counts().await.is_err());
    let w = Worker::start(&q, fast(), |_job: Job<u32>| async { Ok::<_, String>(()) }).unwrap();
    assert!(eventually(10, || async { w.metrics().claim_errors > 0 }).await);
    assert!(w.is_running());
    let _: () = c.del(raw(&prefix, "q", "wait")).await.unwrap();
    // A job key holding a string; a job hash with garbage fields.
    let _: () = c
        .set(raw(&prefix, "q", "job:s"), "garbage", None, None, false)
        .await
        .unwrap();
    assert!(q.job::<()>("s").await.is_err());
    let _: () = c
        .hset(raw(&prefix, "q", "job:h"), [("st", "weird"), ("data", "x")])
        .await
        .unwrap();
    assert_eq!(
        q.job::<()>("h").await.unwrap_err().kind(),
        ErrorKind::Protocol
    );
    // Members without a job, and a job with garbage fields but valid state.
    let _: () = c
        .zadd(
            raw(&prefix, "q", "wait"),
            None,
            None,
            false,
            false,
            (1.0, "ghost"),
        )
        .await
        .unwrap();
    let _: () = c
        .hset(
            raw(&prefix, "q", "job:g"),
            [
                ("id", "g"),
                ("data", "\u{c1}"),
                ("att", "x"),
                ("max", "y"),
                ("bd", "z"),
            ],
        )
        .await
        .unwrap();
    let _: () = c
        .zadd(
            raw(&prefix, "q", "wait"),
            None,
            None,
            false,
            false,
            (2.0, "g"),
        )
        .await
        .unwrap();
    assert!(
        eventually(10, || async {
            q.counts()
                .await
                .map(|c| c.dead == 1 && c.waiting == 0)
                .unwrap_or(false)
        })
        .await
    );
    // The queue still works.
    q.enqueue(&5).await.unwrap();
    assert!(eventually(10, || async { q.counts().await.unwrap().completed == 1 }).await);
    w.shutdown().await;
    assert!(Queue::<u32>::new(&r, &prefix, "").is_err());
    let e = q
        .enqueue_with(
            &1,
            JobOptions::new().delay(Duration::from_secs(u64::MAX / 2)),
        )
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidInput);
}

/// The crate's ACL rule suffices for every operation; another prefix is
/// refused with ErrorKind::Permission.
#[rstest]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn least_privilege_rule_suffices(
    #[values(Topology::Standalone, Topology::Cluster)] topology: Topology,
) {
    use fredkit_testkit::{acl_denials, set_acl_user, url_as};
    let prefix = unique_prefix("jobs_acl");
    let keys = fredkit_jobs::KeySpace::new(&prefix).unwrap();
    let user = format!("jobs-{}", prefix.trim_end_matches(':').replace(':', "-"));
    set_acl_user(topology, &user, "pw", &fredkit_jobs::acl_rule(&keys)).unwrap();
    let limited = connect(&url_as(topology, &user, "pw").unwrap())
        .await
        .unwrap();
    let q: Queue<u32> = Queue::new(&limited, &keys, "q").unwrap();
    let w = Worker::start(&q, fast(), |job: Job<u32>| async move {
        job.progress(1).await.map_err(|e| e.to_string())?;
        Ok::<_, String>(job.payload)
    })
    .unwrap();
    let sched = Scheduler::new(&q)
        .every("s", Duration::from_millis(50), &0)
        .unwrap()
        .start();
    q.enqueue_with(&1, JobOptions::new().id("a")).await.unwrap();
    q.enqueue_bulk([(&2, JobOptions::new())])
        .await
        .into_iter()
        .for_each(|r| drop(r.unwrap()));
    q.enqueue_with(
        &3,
        JobOptions::new().id("f").delay(Duration::from_millis(10)),
    )
    .await
    .unwrap();
    assert!(eventually(20, || async { q.counts().await.unwrap().completed >= 4 }).await);
    assert!(sched.shutdown().await >= 1);
    q.pause().await.unwrap();
    q.resume().await.unwrap();
    assert_eq!(q.job::<u32>("a").await.unwrap().unwrap().result, Some(1));
    assert!(!q.retry("a").await.unwrap());
    assert!(q.remove("a").await.unwrap());
    q.drain().await.unwrap();
    q.clean(true, Duration::ZERO).await.unwrap();
    let report = w.shutdown().await;
    assert_eq!(
        report.metrics.claim_errors + report.metrics.finish_errors,
        0
    );
    assert_eq!(acl_denials(topology, &user).unwrap(), Vec::<String>::new());
    let other: Queue<u32> = Queue::new(&limited, unique_prefix("jobs_acl_other"), "q").unwrap();
    let e = other.enqueue(&1).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Permission, "{e}");
}

const CHILD_URL: &str = "FKJ_CHILD_URL";
const CHILD_PREFIX: &str = "FKJ_CHILD_PREFIX";

/// Not a test on its own: the body of a worker process of
/// `fault_four_worker_processes_sigkilled_twice` (this binary re-executed
/// with FKJ_CHILD_URL set). Runs a worker until killed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn child_worker_process() {
    let Ok(url) = std::env::var(CHILD_URL) else {
        return;
    };
    let prefix = std::env::var(CHILD_PREFIX).unwrap();
    let r = connect(&url).await.unwrap();
    let q: Queue<u32> = Queue::new(&r, &prefix, "q").unwrap();
    let done = format!("{prefix}done");
    let rr = r.clone();
    let _w = Worker::start(
        &q,
        WorkerConfig::new()
            .concurrency(16)
            .lease(Duration::from_millis(1500))
            .block(Duration::from_millis(500)),
        move |job: Job<u32>| {
            let rr = rr.clone();
            let done = done.clone();
            async move {
                let _: i64 = rr
                    .client()
                    .sadd(&done, job.id.as_str())
                    .await
                    .map_err(|e| e.to_string())?;
                tokio::time::sleep(Duration::from_millis(2)).await;
                Ok::<_, String>(())
            }
        },
    )
    .unwrap();
    println!("READY");
    loop {
        tokio::time::sleep(Duration::from_secs(3600)).await;
    }
}

fn spawn_child(url: &str, prefix: &str) -> tokio::process::Child {
    tokio::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "child_worker_process",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_URL, url)
        .env(CHILD_PREFIX, prefix)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap()
}

/// 10,000 jobs, 4 worker processes, one SIGKILLed twice mid-run and
/// restarted: every job completes, each recorded (SADD) — all 10,000;
/// nothing left waiting, active or delayed; stalled jobs are counted.
#[rstest]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_four_worker_processes_sigkilled_twice(
    #[values(Topology::Standalone, Topology::Cluster)] topology: Topology,
) {
    const N: u32 = 10_000;
    let url = shared_url(topology).unwrap();
    let r = redis(topology).await;
    let prefix = unique_prefix("jobs_processes");
    let q: Queue<u32> = Queue::new(&r, &prefix, "q").unwrap();
    let opts = JobOptions::new().max_attempts(50).keep_completed(Keep::All);
    let ids: Vec<u32> = (0..N).collect();
    for chunk in ids.chunks(2000) {
        for res in q
            .enqueue_bulk(chunk.iter().map(|i| (i, opts.clone().id(format!("j{i}")))))
            .await
        {
            assert!(res.unwrap().added);
        }
    }
    let mut children: Vec<_> = (0..4).map(|_| spawn_child(&url, &prefix)).collect();
    for threshold in [N / 10, N / 2] {
        assert!(
            eventually(60, || async {
                q.counts().await.unwrap().completed >= u64::from(threshold)
            })
            .await
        );
        // Kill while it holds jobs (a worker's default name starts with its pid).
        let pid = children[0].id().unwrap();
        assert!(
            eventually(30, || async {
                let active: Vec<String> = r
                    .client()
                    .zrange(raw(&prefix, "q", "active"), 0, -1, None, false, None, false)
                    .await
                    .unwrap();
                for m in active {
                    let wk: Option<String> = r
                        .client()
                        .hget(raw(&prefix, "q", &format!("job:{m}")), "wk")
                        .await
                        .unwrap();
                    if wk.is_some_and(|w| w.starts_with(&format!("{pid}-"))) {
                        return true;
                    }
                }
                false
            })
            .await,
            "the victim never held a job"
        );
        let victim = &mut children[0];
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(victim.id().unwrap() as i32),
            nix::sys::signal::Signal::SIGKILL,
        )
        .unwrap();
        victim.wait().await.unwrap();
        children[0] = spawn_child(&url, &prefix);
    }
    assert!(
        eventually(60, || async {
            q.counts().await.unwrap().completed == u64::from(N)
        })
        .await,
        "{:?}",
        q.counts().await.unwrap()
    );
    let c = q.counts().await.unwrap();
    assert_eq!(
        (c.waiting, c.active, c.delayed, c.failed, c.dead),
        (0, 0, 0, 0, 0),
        "{c:?}"
    );
    assert!(
        c.stalled >= 1,
        "the killed worker's jobs were recovered as stalled: {c:?}"
    );
    let done: i64 = r.client().scard(format!("{prefix}done")).await.unwrap();
    assert_eq!(done, i64::from(N));
    for mut child in children {
        child.kill().await.unwrap();
    }
}

/// A private deployment (AOF on, fsync on every write) that a fault test
/// pauses and kills: a standalone server, or a 3-master cluster of which the
/// test faults the master owning the queue's slot.
enum Private {
    Server(fredkit_testkit::RedisServer),
    Cluster(fredkit_testkit::RedisCluster),
}

impl Private {
    fn start_with_aof(topology: Topology) -> Private {
        use fredkit_testkit::{ClusterOptions, RedisCluster, RedisServer, ServerOptions};
        let opts = ServerOptions::default()
            .aof(true)
            .arg("appendfsync", "always");
        match topology {
            Topology::Cluster => Private::Cluster(
                RedisCluster::start(ClusterOptions::default().server_options(opts)).unwrap(),
            ),
            _ => Private::Server(RedisServer::start_with(opts).unwrap()),
        }
    }

    fn url(&self) -> String {
        match self {
            Private::Server(s) => s.url(),
            Private::Cluster(c) => c.url(),
        }
    }

    /// The node that holds `key` (all of a queue's keys share its hash tag).
    fn owner_mut(&mut self, key: &str) -> &mut fredkit_testkit::RedisServer {
        match self {
            Private::Server(s) => s,
            Private::Cluster(c) => {
                let i = c
                    .master_index_for_slot(fredkit_testkit::key_slot(key.as_bytes()))
                    .unwrap();
                &mut c.masters_mut()[i]
            }
        }
    }
}

/// The server (on a cluster: the master owning the queue's slot)
/// SIGSTOPped for 5 s, then SIGKILLed and restarted with AOF: no call hangs
/// past the command timeout, no acknowledged enqueue is lost, the worker
/// resumes without user action.
#[rstest]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_server_paused_then_killed_and_restarted_with_aof(
    #[values(Topology::Standalone, Topology::Cluster)] topology: Topology,
) {
    let mut deployment = tokio::task::spawn_blocking(move || Private::start_with_aof(topology))
        .await
        .unwrap();
    let r = connect(&deployment.url()).await.unwrap();
    let cmd_timeout = r.config().command_timeout();
    let q: Queue<u32> = Queue::new(&r, "jobs_fault", "q").unwrap();
    let done = Arc::new(Mutex::new(HashSet::new()));
    let d = Arc::clone(&done);
    let w = Worker::start(
        &q,
        fast().lease(Duration::from_secs(2)),
        move |job: Job<u32>| {
            d.lock().unwrap().insert(job.payload);
            async { Ok::<_, String>(()) }
        },
    )
    .unwrap();
    let acked = Arc::new(Mutex::new(Vec::new()));
    let slowest = Arc::new(Mutex::new(Duration::ZERO));
    // Set once the server is back: the producer then stops after 50 more
    // acknowledged enqueues, so it runs through the whole fault.
    let restarted = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (a, s, q2, back) = (
        Arc::clone(&acked),
        Arc::clone(&slowest),
        q.clone(),
        Arc::clone(&restarted),
    );
    let producer = tokio::spawn(async move {
        let mut acked_after_restart = 0;
        for i in 0..100_000u32 {
            let after_restart = back.load(std::sync::atomic::Ordering::SeqCst);
            let t = tokio::time::Instant::now();
            let r = q2
                .enqueue_with(&i, JobOptions::new().id(format!("p{i}")))
                .await;
            let took = t.elapsed();
            {
                let mut s = s.lock().unwrap();
                *s = (*s).max(took);
            }
            if r.is_ok() {
                a.lock().unwrap().push(i);
                if after_restart {
                    acked_after_restart += 1;
                }
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
            if acked_after_restart >= 50 {
                break;
            }
        }
    });
    let server = deployment.owner_mut(&raw("jobs_fault", "q", "wait"));
    tokio::time::sleep(Duration::from_millis(500)).await;
    server.pause().unwrap();
    tokio::time::sleep(Duration::from_secs(5)).await;
    server.resume().unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    server.kill().unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    tokio::task::block_in_place(|| server.restart().unwrap());
    restarted.store(true, std::sync::atomic::Ordering::SeqCst);
    tokio::time::timeout(Duration::from_secs(60), producer)
        .await
        .expect("enqueues never succeeded again after the restart")
        .unwrap();
    // Fred retries a command at most 3 times, each bounded by the command timeout.
    let bound = cmd_timeout * 4 + Duration::from_secs(1);
    eprintln!(
        "{topology:?}: slowest enqueue {:?} (bound {bound:?}), {} acknowledged",
        slowest.lock().unwrap(),
        acked.lock().unwrap().len()
    );
    assert!(
        *slowest.lock().unwrap() <= bound,
        "an enqueue took {:?}",
        slowest.lock().unwrap()
    );
    let acked = acked.lock().unwrap().clone();
    assert!(acked.len() >= 50);
    assert!(
        eventually(30, || async {
            let done = done.lock().unwrap();
            acked.iter().all(|i| done.contains(i))
        })
        .await,
        "acknowledged jobs not run: {:?}",
        acked
            .iter()
            .filter(|i| !done.lock().unwrap().contains(i))
            .count()
    );
    w.shutdown().await;
}

/// A handler running longer than the lease keeps its job (the lease is
/// renewed): two workers, each job runs once, nothing stalls. An attempt
/// past its timeout fails.
#[rstest]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lease_renewed_while_handler_runs_and_timeout_fails(
    #[values(Topology::Standalone, Topology::Cluster)] topology: Topology,
) {
    let r = redis(topology).await;
    let q: Queue<u64> = Queue::new(&r, unique_prefix("jobs_lease"), "q").unwrap();
    let runs = Arc::new(Mutex::new(Vec::new()));
    let mut workers = Vec::new();
    for _ in 0..2 {
        let seen = Arc::clone(&runs);
        workers.push(
            Worker::start(
                &q,
                fast()
                    .lease(Duration::from_millis(1000))
                    .block(Duration::from_millis(100)),
                move |job: Job<u64>| {
                    seen.lock().unwrap().push(job.id.clone());
                    async move {
                        tokio::time::sleep(Duration::from_millis(job.payload)).await;
                        Ok::<_, String>(())
                    }
                },
            )
            .unwrap(),
        );
    }
    for i in 0..3 {
        q.enqueue_with(&2500, JobOptions::new().id(format!("long{i}")))
            .await
            .unwrap();
    }
    q.enqueue_with(
        &5000,
        JobOptions::new()
            .id("slow")
            .timeout(Duration::from_millis(100))
            .max_attempts(1),
    )
    .await
    .unwrap();
    assert!(
        eventually(20, || async {
            let c = q.counts().await.unwrap();
            c.completed == 3 && c.dead == 1
        })
        .await
    );
    let c = q.counts().await.unwrap();
    assert_eq!(c.stalled, 0, "{c:?}");
    let mut runs = runs.lock().unwrap().clone();
    runs.sort();
    assert_eq!(runs, vec!["long0", "long1", "long2", "slow"]);
    let info = q.job::<()>("slow").await.unwrap().unwrap();
    assert!(
        info.errors[0].message.contains("timed out"),
        "{:?}",
        info.errors
    );
    for w in workers {
        assert_eq!(w.shutdown().await.metrics.lease_lost, 0);
    }
}

/// A per-queue rate limit across workers: 8 jobs at 2 per 500 ms take at
/// least 3 windows from the first start to the last (server clock).
#[rstest]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limit_spreads_starts(
    #[values(Topology::Standalone, Topology::Cluster)] topology: Topology,
) {
    use fredkit_ratelimit::{Limit, Limiter};
    let r = redis(topology).await;
    let prefix = unique_prefix("jobs_rate");
    let q: Queue<u32> = Queue::new(&r, &prefix, "q").unwrap();
    for i in 0..8u32 {
        q.enqueue_with(&i, JobOptions::new().id(format!("r{i}")))
            .await
            .unwrap();
    }
    let mut workers = Vec::new();
    for _ in 0..2 {
        let limiter = Limiter::builder(&r, format!("{prefix}rl"))
            .limit(Limit::fixed_window(2, Duration::from_millis(500)))
            .fail_mode(fredkit_jobs::FailMode::Closed)
            .build()
            .unwrap();
        workers.push(
            Worker::start(&q, fast().rate_limit(limiter), |_job: Job<u32>| async {
                Ok::<_, String>(())
            })
            .unwrap(),
        );
    }
    assert!(eventually(20, || async { q.counts().await.unwrap().completed == 8 }).await);
    let mut starts = Vec::new();
    for i in 0..8 {
        starts.push(
            q.job::<()>(&format!("r{i}"))
                .await
                .unwrap()
                .unwrap()
                .attempt_starts[0],
        );
    }
    starts.sort();
    let span = starts[7].duration_since(starts[0]).unwrap();
    assert!(
        span >= Duration::from_millis(500),
        "8 starts at 2 per 500 ms within {span:?}"
    );
    let mut limited = 0;
    for w in workers {
        limited += w.shutdown().await.metrics.rate_limited;
    }
    assert!(limited > 0);
}

/// Cron schedules (6 fields, every second) from two schedulers: each tick once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cron_schedule_two_schedulers_each_tick_once() {
    let r = redis(Topology::Standalone).await;
    let prefix = unique_prefix("jobs_cron");
    let q: Queue<String> = Queue::new(&r, &prefix, "q").unwrap();
    let a = Scheduler::new(&q)
        .cron("sec", "* * * * * *", &"t".into())
        .unwrap()
        .start();
    let b = Scheduler::new(&q)
        .cron("sec", "* * * * * *", &"t".into())
        .unwrap()
        .start();
    assert!(
        eventually(10, || async {
            let c = q.counts().await.unwrap();
            c.waiting + c.delayed >= 2
        })
        .await
    );
    let total = a.shutdown().await + b.shutdown().await;
    let members: Vec<String> = r
        .client()
        .zrange(raw(&prefix, "q", "wait"), 0, -1, None, false, None, false)
        .await
        .unwrap();
    let mut ticks: Vec<i64> = members
        .iter()
        .map(|m| m.strip_prefix("sec%3A").unwrap().parse().unwrap())
        .collect();
    ticks.sort_unstable();
    assert_eq!(total, ticks.len() as u64);
    for pair in ticks.windows(2) {
        assert_eq!(pair[1] - pair[0], 1000, "{ticks:?}");
    }
    assert!(ticks.iter().all(|t| t % 1000 == 0));
}

/// An enqueue whose reply is lost runs twice (fred resends it); the call
/// still says it added the job, and there is one job.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_client_kill_lost_reply_enqueue_is_one_job() {
    use fredkit_testkit::{with_lost_reply, RedisServer, Reply, ServerOptions};
    let server = RedisServer::start_with(
        ServerOptions::default()
            .arg("slowlog-log-slower-than", "0")
            .arg("slowlog-max-len", "10000"),
    )
    .unwrap();
    let config = fredkit_conn::RedisConfig::builder()
        .url(server.url())
        .command_timeout(Duration::from_secs(10))
        .pool_size(1)
        .build()
        .unwrap();
    let r = Redis::connect(config).await.unwrap();
    r.wait_connected().await.unwrap();
    let q: Queue<String> = Queue::new(&r, "jobs_lost", "q").unwrap();
    q.enqueue_with(&"warm".into(), JobOptions::new().id("warm"))
        .await
        .unwrap();
    let q2 = q.clone();
    let e = with_lost_reply(&server, 300, async move {
        q2.enqueue_with(&"x".into(), JobOptions::new().id("lost-reply"))
            .await
    })
    .await
    .unwrap()
    .unwrap();
    assert!(e.added, "{e:?}");
    let Reply::Array(Some(entries)) = server.command(&["SLOWLOG", "GET", "-1"]).unwrap() else {
        panic!("SLOWLOG")
    };
    let runs = entries
        .iter()
        .filter(|e| {
            let Reply::Array(Some(fields)) = e else {
                return false;
            };
            let Some(Reply::Array(Some(args))) = fields.get(3) else {
                return false;
            };
            args.iter()
                .filter_map(Reply::as_str)
                .any(|a| a == "lost-reply")
        })
        .count();
    assert!(
        runs >= 2,
        "the enqueue script ran {runs} times, not twice or more"
    );
    assert_eq!(q.counts().await.unwrap().waiting, 2);
}

/// With the `metrics` feature: enqueues by outcome, attempts by outcome, and
/// the wait and run time histograms.
#[cfg(feature = "metrics")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_enqueues_attempts_and_times() {
    use metrics_util::debugging::{DebugValue, DebuggingRecorder};
    let r = redis(Topology::Standalone).await;
    let prefix = unique_prefix("jobs_metrics");
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let q: Queue<u32> =
        metrics::with_local_recorder(&recorder, || Queue::new(&r, &prefix, "q")).unwrap();
    q.enqueue_with(&1, JobOptions::new().id("a")).await.unwrap();
    q.enqueue_with(&1, JobOptions::new().id("a")).await.unwrap();
    q.enqueue_with(&2, JobOptions::new().id("b").max_attempts(1))
        .await
        .unwrap();
    let w = Worker::start(&q, fast(), |job: Job<u32>| async move {
        if job.payload == 2 {
            Err("no".to_string())
        } else {
            Ok(())
        }
    })
    .unwrap();
    assert!(
        eventually(20, || async {
            let c = q.counts().await.unwrap();
            c.completed == 1 && c.dead == 1
        })
        .await
    );
    w.shutdown().await;
    let mut counters = std::collections::HashMap::new();
    let mut histograms = std::collections::HashMap::new();
    for (key, _, _, value) in snapshotter.snapshot().into_vec() {
        let name = key.key().name().to_string();
        let outcome = key
            .key()
            .labels()
            .find(|l| l.key() == "outcome")
            .map(|l| l.value().to_string())
            .unwrap_or_default();
        assert!(key
            .key()
            .labels()
            .any(|l| l.key() == "name" && l.value() == "q"));
        match value {
            DebugValue::Counter(n) => {
                counters.insert(format!("{name}/{outcome}"), n);
            }
            DebugValue::Histogram(v) => {
                histograms.insert(name, v.len());
            }
            _ => {}
        }
    }
    assert_eq!(
        counters.get("fredkit_jobs_enqueued_total/added"),
        Some(&2),
        "{counters:?}"
    );
    assert_eq!(
        counters.get("fredkit_jobs_enqueued_total/duplicate"),
        Some(&1)
    );
    assert_eq!(
        counters.get("fredkit_jobs_attempts_total/completed"),
        Some(&1)
    );
    assert_eq!(counters.get("fredkit_jobs_attempts_total/dead"), Some(&1));
    assert_eq!(histograms.get("fredkit_jobs_wait_seconds"), Some(&2));
    assert_eq!(histograms.get("fredkit_jobs_run_seconds"), Some(&2));
}
