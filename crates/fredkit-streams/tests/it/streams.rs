//! fredkit-streams against real servers, standalone and cluster.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use crate::common;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{connect, fast, keys, pending, wait_until, Job};
use fred::interfaces::{KeysInterface, StreamsInterface};
use fred::types::Value;
use fredkit_core::traits::StreamProducer;
use fredkit_core::{Codec, ErrorKind, MsgPack};
use fredkit_streams::{
    Message, Producer, ProducerConfig, StartFrom, StreamAdmin, StreamId, Trim, Worker,
    TRACE_ID_HEADER,
};
use fredkit_testkit::{shared_url, Topology};
use rstest::rstest;

type Counts = Arc<Mutex<HashMap<u64, u32>>>;
/// (job, delivery count, replayed from).
type Handled = Arc<Mutex<Vec<(u64, u64, Option<String>)>>>;

fn bump(map: &Counts, n: u64) {
    *map.lock().unwrap().entry(n).or_insert(0) += 1;
}

#[rstest]
#[case::standalone(Topology::Standalone)]
#[case::cluster(Topology::Cluster)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_message_is_handled_exactly_once_or_dead_lettered_under_random_failures(
    #[case] topology: Topology,
) {
    const N: u64 = 10_000;
    const MAX_DELIVERIES: u64 = 5;
    let redis = connect(&shared_url(topology).unwrap()).await;
    let keys = keys("exactly_once");
    let admin = StreamAdmin::new(&redis, keys.clone());
    let producer = Producer::<Job>::new(&redis, keys.clone());

    let successes: Counts = Arc::default();
    let attempts = Arc::new(AtomicU64::new(0));
    let mut workers = Vec::new();
    for _ in 0..4 {
        let successes = Arc::clone(&successes);
        let attempts = Arc::clone(&attempts);
        let config = fast("g")
            .count(32)
            .concurrency(32)
            .max_deliveries(MAX_DELIVERIES)
            .build()
            .unwrap();
        let worker = Worker::start(&redis, keys.clone(), config, move |m: Message<Job>| {
            let successes = Arc::clone(&successes);
            let attempts = Arc::clone(&attempts);
            async move {
                attempts.fetch_add(1, Ordering::Relaxed);
                if rand::random::<f64>() < 0.10 {
                    return Err(format!("random failure of job {}", m.payload.n));
                }
                bump(&successes, m.payload.n);
                Ok(())
            }
        })
        .await
        .unwrap();
        workers.push(worker);
    }

    let jobs: Vec<Job> = (0..N).map(|n| Job { n }).collect();
    for chunk in jobs.chunks(500) {
        for r in producer.publish_batch(chunk).await {
            r.unwrap();
        }
    }
    assert_eq!(producer.metrics().snapshot().published, N);

    wait_until(
        "every job handled or dead-lettered, nothing pending",
        || {
            let successes = Arc::clone(&successes);
            let admin = admin.clone();
            async move {
                let done = successes.lock().unwrap().len() as u64;
                let dead = admin.dead_letter_count().await.unwrap();
                done + dead == N && pending(&admin, "g").await == 0
            }
        },
    )
    .await;

    let mut handled = 0;
    let mut failed = 0;
    for w in workers {
        let report = w.shutdown().await;
        assert_eq!(report.abandoned, 0);
        assert_eq!(report.unacked, 0);
        handled += report.metrics.handled;
        failed += report.metrics.failed;
    }

    let successes = successes.lock().unwrap().clone();
    let dead = admin.dead_letters(N).await.unwrap();
    let mut dead_jobs = HashSet::new();
    for d in &dead {
        let job: Job = d.decode(&MsgPack).unwrap();
        assert_eq!(d.group, "g");
        assert_eq!(d.deliveries, MAX_DELIVERIES, "{d:?}");
        assert!(d.error.contains("random failure"), "{d:?}");
        assert!(d.original_id.is_some());
        assert!(
            !successes.contains_key(&job.n),
            "job {} both handled and dead-lettered",
            job.n
        );
        assert!(dead_jobs.insert(job.n), "job {} dead-lettered twice", job.n);
    }
    for n in 0..N {
        let ok = successes.get(&n).copied().unwrap_or(0);
        assert!(
            ok == 1 || (ok == 0 && dead_jobs.contains(&n)),
            "job {n}: handled successfully {ok} times, dead-lettered: {}",
            dead_jobs.contains(&n)
        );
    }
    assert_eq!(handled, N - dead_jobs.len() as u64);
    assert_eq!(pending(&admin, "g").await, 0);
    assert!(failed > 0, "the handler fails 10% of attempts");
    assert_eq!(
        attempts.load(Ordering::Relaxed),
        handled + failed,
        "every attempt is either a success or a failure"
    );
}

#[rstest]
#[case::standalone(Topology::Standalone)]
#[case::cluster(Topology::Cluster)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aborted_workers_messages_are_handled_by_another_worker_after_min_idle(
    #[case] topology: Topology,
) {
    const N: u64 = 60;
    let redis = connect(&shared_url(topology).unwrap()).await;
    let keys = keys("abort");
    let admin = StreamAdmin::new(&redis, keys.clone());
    let producer = Producer::<Job>::new(&redis, keys.clone());
    for r in producer
        .publish_batch(&(0..N).map(|n| Job { n }).collect::<Vec<_>>())
        .await
    {
        r.unwrap();
    }

    // Worker A takes a batch and never finishes it (its handlers hang).
    let seen_by_a: Arc<Mutex<HashSet<u64>>> = Arc::default();
    let config_a = fast("g")
        .count(20)
        .concurrency(20)
        .handler_timeout(Duration::from_secs(20))
        .min_idle(Duration::from_secs(30))
        .build()
        .unwrap();
    let seen = Arc::clone(&seen_by_a);
    let a = Worker::start(&redis, keys.clone(), config_a, move |m: Message<Job>| {
        seen.lock().unwrap().insert(m.payload.n);
        async move {
            futures::future::pending::<()>().await;
            Ok::<(), String>(())
        }
    })
    .await
    .unwrap();
    wait_until("worker A is mid-batch", || {
        let seen = Arc::clone(&seen_by_a);
        async move { seen.lock().unwrap().len() == 20 }
    })
    .await;
    let a_consumer = a.consumer().to_string();
    a.abort();
    let seen_by_a = seen_by_a.lock().unwrap().clone();
    let summary = admin.pending("g").await.unwrap();
    assert!(
        summary
            .consumers
            .iter()
            .any(|(c, n)| *c == a_consumer && *n == 20),
        "A's batch is pending for A: {summary:?}"
    );

    // Worker B handles everything, A's batch once it has been idle long enough.
    let by_b: Arc<Mutex<HashMap<u64, Vec<u64>>>> = Arc::default();
    let record = Arc::clone(&by_b);
    let b = Worker::start(
        &redis,
        keys.clone(),
        fast("g").build().unwrap(),
        move |m: Message<Job>| {
            record
                .lock()
                .unwrap()
                .entry(m.payload.n)
                .or_default()
                .push(m.deliveries);
            async { Ok::<(), String>(()) }
        },
    )
    .await
    .unwrap();
    wait_until("B handled every job", || {
        let by_b = Arc::clone(&by_b);
        let admin = admin.clone();
        async move { by_b.lock().unwrap().len() as u64 == N && pending(&admin, "g").await == 0 }
    })
    .await;
    let report = b.shutdown().await;
    let by_b = by_b.lock().unwrap().clone();
    for n in 0..N {
        let deliveries = &by_b[&n];
        assert_eq!(deliveries.len(), 1, "job {n} handled {deliveries:?}");
        if seen_by_a.contains(&n) {
            assert_eq!(
                deliveries[0], 2,
                "job {n} was A's: B got it as a redelivery"
            );
        } else {
            assert_eq!(deliveries[0], 1, "job {n} was never A's");
        }
    }
    assert_eq!(report.metrics.reclaimed, 20);
    assert_eq!(report.metrics.handled, N);
    assert_eq!(admin.dead_letter_count().await.unwrap(), 0);
}

#[rstest]
#[case::standalone(Topology::Standalone)]
#[case::cluster(Topology::Cluster)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_payload_is_dead_lettered_with_the_decode_error_and_the_worker_keeps_going(
    #[case] topology: Topology,
) {
    let redis = connect(&shared_url(topology).unwrap()).await;
    let keys = keys("garbage");
    let admin = StreamAdmin::new(&redis, keys.clone());
    let producer = Producer::<Job>::new(&redis, keys.clone());
    producer.publish(&Job { n: 1 }).await.unwrap();
    let garbage: String = redis
        .client()
        .xadd(
            keys.stream(),
            false,
            None,
            "*",
            vec![(
                "payload",
                Value::Bytes(bytes::Bytes::from_static(b"\xc1\xff not msgpack")),
            )],
        )
        .await
        .unwrap();
    let no_payload: String = redis
        .client()
        .xadd(keys.stream(), false, None, "*", vec![("something", "else")])
        .await
        .unwrap();
    producer.publish(&Job { n: 2 }).await.unwrap();

    let handled: Counts = Arc::default();
    let record = Arc::clone(&handled);
    let worker = Worker::start(
        &redis,
        keys.clone(),
        fast("g").build().unwrap(),
        move |m: Message<Job>| {
            bump(&record, m.payload.n);
            async { Ok::<(), String>(()) }
        },
    )
    .await
    .unwrap();
    wait_until(
        "both good jobs handled and both bad entries dead-lettered",
        || {
            let handled = Arc::clone(&handled);
            let admin = admin.clone();
            async move {
                handled.lock().unwrap().len() == 2 && admin.dead_letter_count().await.unwrap() == 2
            }
        },
    )
    .await;
    // The worker keeps going after the garbage.
    producer.publish(&Job { n: 3 }).await.unwrap();
    wait_until("a job after the garbage is handled", || {
        let handled = Arc::clone(&handled);
        async move { handled.lock().unwrap().contains_key(&3) }
    })
    .await;
    let report = worker.shutdown().await;

    let dead = admin.dead_letters(10).await.unwrap();
    assert_eq!(dead.len(), 2);
    let by_id: HashMap<String, _> = dead
        .iter()
        .map(|d| (d.original_id.clone().unwrap().to_string(), d))
        .collect();
    let g = by_id[&garbage];
    assert!(g.error.contains("decode"), "{g:?}");
    assert!(g.error.contains("msgpack"), "{g:?}");
    assert_eq!(g.deliveries, 1, "dead-lettered at once, not retried");
    assert_eq!(
        g.payload.as_deref(),
        Some(&b"\xc1\xff not msgpack"[..]),
        "the original bytes are kept"
    );
    let np = by_id[&no_payload];
    assert!(np.error.contains("no 'payload' field"), "{np:?}");
    assert_eq!(
        np.headers,
        vec![("something".to_string(), "else".to_string())]
    );
    assert_eq!(report.metrics.decode_errors, 2);
    assert_eq!(report.metrics.dead_lettered, 2);
    // An entry without a payload cannot be replayed; the operator discards it.
    let replay = admin.replay_dead_letters(10).await.unwrap();
    assert_eq!(
        replay.replayed, 1,
        "the garbage bytes go back (they are a payload)"
    );
    assert_eq!(replay.skipped, 1);
    assert_eq!(
        admin
            .discard_dead_letters(std::slice::from_ref(&np.id))
            .await
            .unwrap(),
        1
    );
    assert_eq!(admin.dead_letter_count().await.unwrap(), 0);
    assert_eq!(report.metrics.handled, 3);
    assert_eq!(pending(&admin, "g").await, 0);
    assert!(handled.lock().unwrap().values().all(|c| *c == 1));
}

#[rstest]
#[case::standalone(Topology::Standalone)]
#[case::cluster(Topology::Cluster)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_lets_in_flight_handlers_complete_and_acknowledges_them(
    #[case] topology: Topology,
) {
    const N: u64 = 30;
    let redis = connect(&shared_url(topology).unwrap()).await;
    let keys = keys("shutdown");
    let admin = StreamAdmin::new(&redis, keys.clone());
    let producer = Producer::<Job>::new(&redis, keys.clone());
    for r in producer
        .publish_batch(&(0..N).map(|n| Job { n }).collect::<Vec<_>>())
        .await
    {
        r.unwrap();
    }
    let started: Counts = Arc::default();
    let completed: Counts = Arc::default();
    let config = fast("g")
        .concurrency(8)
        .count(8)
        .handler_timeout(Duration::from_secs(5))
        .min_idle(Duration::from_secs(10))
        .build()
        .unwrap();
    let (s, c) = (Arc::clone(&started), Arc::clone(&completed));
    let worker = Worker::start(&redis, keys.clone(), config, move |m: Message<Job>| {
        bump(&s, m.payload.n);
        let c = Arc::clone(&c);
        async move {
            tokio::time::sleep(Duration::from_millis(300)).await;
            bump(&c, m.payload.n);
            Ok::<(), String>(())
        }
    })
    .await
    .unwrap();
    wait_until("8 handlers in flight", || {
        let started = Arc::clone(&started);
        async move { started.lock().unwrap().len() >= 8 }
    })
    .await;
    let report = worker.shutdown().await;

    let started = started.lock().unwrap().clone();
    let completed = completed.lock().unwrap().clone();
    assert!(report.in_flight_at_stop >= 1, "{report:?}");
    assert_eq!(report.abandoned, 0);
    assert_eq!(report.unacked, 0);
    assert_eq!(started, completed, "every started handler completed");
    assert!(completed.values().all(|c| *c == 1));
    assert_eq!(report.metrics.handled, completed.len() as u64);
    assert_eq!(report.metrics.acked, completed.len() as u64);
    assert_eq!(pending(&admin, "g").await, 0, "no message is half-done");
    assert!(
        report.consumer_removed,
        "the generated consumer leaves the group"
    );

    // What was never read is still there for the next worker.
    let rest: Counts = Arc::default();
    let r = Arc::clone(&rest);
    let next = Worker::start(
        &redis,
        keys.clone(),
        fast("g").build().unwrap(),
        move |m: Message<Job>| {
            bump(&r, m.payload.n);
            async { Ok::<(), String>(()) }
        },
    )
    .await
    .unwrap();
    wait_until("the rest handled", || {
        let rest = Arc::clone(&rest);
        let n = completed.len();
        async move { rest.lock().unwrap().len() + n == N as usize }
    })
    .await;
    next.shutdown().await;
    let rest = rest.lock().unwrap();
    assert!(rest.keys().all(|n| !completed.contains_key(n)));
    assert!(rest.values().all(|c| *c == 1));
}

#[rstest]
#[case::standalone(Topology::Standalone)]
#[case::cluster(Topology::Cluster)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison_message_is_dead_lettered_after_max_deliveries_and_replays(
    #[case] topology: Topology,
) {
    let redis = connect(&shared_url(topology).unwrap()).await;
    let keys = keys("poison");
    let admin = StreamAdmin::new(&redis, keys.clone());
    let producer = Producer::<Job>::new(&redis, keys.clone());
    let healed = Arc::new(AtomicBool::new(false));
    let handled: Handled = Arc::default();
    let (h, record) = (Arc::clone(&healed), Arc::clone(&handled));
    let worker = Worker::start(
        &redis,
        keys.clone(),
        fast("g").max_deliveries(3).build().unwrap(),
        move |m: Message<Job>| {
            let poison = m.payload.n == 13 && !h.load(Ordering::SeqCst);
            if !poison {
                record.lock().unwrap().push((
                    m.payload.n,
                    m.deliveries,
                    m.replayed_from().map(String::from),
                ));
            }
            async move {
                if poison {
                    Err(std::io::Error::other("job 13 is poison"))
                } else {
                    Ok(())
                }
            }
        },
    )
    .await
    .unwrap();
    let id13 = producer
        .publish_with(&Job { n: 13 }, &[(TRACE_ID_HEADER, "trace-13")])
        .await
        .unwrap();
    producer.publish(&Job { n: 14 }).await.unwrap();
    wait_until("job 13 dead-lettered", || {
        let admin = admin.clone();
        async move { admin.dead_letter_count().await.unwrap() == 1 }
    })
    .await;
    let dead = admin.dead_letters(10).await.unwrap();
    let d = &dead[0];
    assert_eq!(d.original_id.as_ref(), Some(&id13));
    assert_eq!(d.group, "g");
    assert_eq!(d.deliveries, 3);
    assert!(d.error.contains("job 13 is poison"), "{d:?}");
    assert!(d.at_ms > 0);
    assert_eq!(d.decode::<Job, _>(&MsgPack).unwrap(), Job { n: 13 });
    assert!(d
        .headers
        .contains(&("trace_id".to_string(), "trace-13".to_string())));
    assert_eq!(pending(&admin, "g").await, 0);
    let m = worker.metrics();
    assert_eq!(m.failed, 3);
    assert_eq!(m.retried, 2);
    assert_eq!(m.dead_lettered, 1);

    // The operator fixes the bug and replays.
    healed.store(true, Ordering::SeqCst);
    let replay = admin.replay_dead_letters(10).await.unwrap();
    assert_eq!(replay.replayed, 1);
    assert_eq!(replay.skipped, 0);
    assert_eq!(admin.dead_letter_count().await.unwrap(), 0);
    wait_until("the replayed job is handled", || {
        let handled = Arc::clone(&handled);
        async move { handled.lock().unwrap().iter().any(|(n, _, _)| *n == 13) }
    })
    .await;
    worker.shutdown().await;
    let handled = handled.lock().unwrap();
    let replayed: Vec<_> = handled.iter().filter(|(n, _, _)| *n == 13).collect();
    assert_eq!(replayed.len(), 1);
    assert_eq!(replayed[0].1, 1, "a replay is a new entry, first delivery");
    assert_eq!(replayed[0].2.as_deref(), Some(id13.as_str()));
}

#[rstest]
#[case::standalone(Topology::Standalone)]
#[case::cluster(Topology::Cluster)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entries_trimmed_while_pending_are_counted_not_silently_lost(#[case] topology: Topology) {
    let redis = connect(&shared_url(topology).unwrap()).await;
    let keys = keys("trimmed");
    let admin = StreamAdmin::new(&redis, keys.clone());
    let producer = Producer::<Job>::new(&redis, keys.clone());
    let worker = Worker::start(
        &redis,
        keys.clone(),
        fast("g").max_deliveries(100).build().unwrap(),
        |_m: Message<Job>| async { Err::<(), _>("always fails") },
    )
    .await
    .unwrap();
    for n in 0..5 {
        producer.publish(&Job { n }).await.unwrap();
    }
    wait_until("all five delivered and pending", || {
        let admin = admin.clone();
        let w = worker.metrics();
        async move { w.failed >= 5 && pending(&admin, "g").await == 5 }
    })
    .await;
    let trimmed: i64 = redis
        .client()
        .xtrim(keys.stream(), ("MAXLEN", "=", 0))
        .await
        .unwrap();
    assert_eq!(trimmed, 5);
    wait_until("the claim reports the deleted entries", || {
        let m = worker.metrics();
        async move { m.deleted_while_pending == 5 }
    })
    .await;
    assert_eq!(pending(&admin, "g").await, 0);
    let report = worker.shutdown().await;
    assert_eq!(report.metrics.deleted_while_pending, 5);
    assert_eq!(report.metrics.handled, 0);
}

#[rstest]
#[case::standalone(Topology::Standalone)]
#[case::cluster(Topology::Cluster)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_creation_is_idempotent_and_admin_reports_pending_and_lag(
    #[case] topology: Topology,
) {
    let redis = connect(&shared_url(topology).unwrap()).await;
    let keys = keys("admin");
    let admin = StreamAdmin::new(&redis, keys.clone());
    assert!(admin.groups().await.unwrap().is_empty(), "no stream yet");
    assert!(admin.create_group("g", StartFrom::Beginning).await.unwrap());
    assert!(
        !admin.create_group("g", StartFrom::NewOnly).await.unwrap(),
        "BUSYGROUP is not an error"
    );
    let producer = Producer::<Job>::new(&redis, keys.clone());
    let mut ids = Vec::new();
    for n in 0..10 {
        ids.push(producer.publish(&Job { n }).await.unwrap());
    }
    assert!(admin
        .create_group("late", StartFrom::NewOnly)
        .await
        .unwrap());
    // A group starting after the fifth entry reads the last five.
    assert!(admin
        .create_group("mid", StartFrom::After(ids[4].clone()))
        .await
        .unwrap());
    let mid: Value = redis
        .client()
        .xreadgroup("mid", "c", Some(100), None, false, keys.stream(), ">")
        .await
        .unwrap();
    let mid = format!("{mid:?}");
    assert!(
        !mid.contains(ids[4].as_str())
            && mid.contains(ids[5].as_str())
            && mid.contains(ids[9].as_str()),
        "{mid}"
    );
    // Deliver three entries to consumer "c" without acknowledging them.
    let _: Value = redis
        .client()
        .xreadgroup("g", "c", Some(3), None, false, keys.stream(), ">")
        .await
        .unwrap();
    let summary = admin.pending("g").await.unwrap();
    assert_eq!(summary.total, 3);
    assert_eq!(summary.consumers, vec![("c".to_string(), 3)]);
    assert!(summary.oldest.is_some() && summary.oldest <= summary.newest);
    let g = admin.group("g").await.unwrap().unwrap();
    assert_eq!(g.pending, 3);
    assert_eq!(g.consumers, 1);
    assert_eq!(g.lag, Some(7), "Redis 7 reports the lag");
    assert_eq!(g.entries_read, Some(3));
    let late = admin.group("late").await.unwrap().unwrap();
    assert_eq!(late.lag, Some(0), "created at $");
    assert!(admin.create_group("", StartFrom::Beginning).await.is_err());
}

#[rstest]
#[case::standalone(Topology::Standalone)]
#[case::cluster(Topology::Cluster)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn headers_and_trace_id_travel_from_producer_to_handler(#[case] topology: Topology) {
    let redis = connect(&shared_url(topology).unwrap()).await;
    let keys = keys("headers");
    let producer = Producer::<Job>::with_config(
        &redis,
        keys.clone(),
        ProducerConfig::builder()
            .event_type("job.created")
            .build()
            .unwrap(),
        MsgPack,
    );
    let got: Arc<Mutex<Vec<Message<Job>>>> = Arc::default();
    let record = Arc::clone(&got);
    let worker = Worker::start(
        &redis,
        keys.clone(),
        fast("g").build().unwrap(),
        move |m: Message<Job>| {
            record.lock().unwrap().push(m);
            async { Ok::<(), String>(()) }
        },
    )
    .await
    .unwrap();
    let id = producer
        .publish_with(
            &Job { n: 1 },
            &[(TRACE_ID_HEADER, "abc123"), ("tenant", "t1")],
        )
        .await
        .unwrap();
    let err = producer
        .publish_with(&Job { n: 2 }, &[("payload", "x")])
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidInput);
    let err = producer
        .publish_with(&Job { n: 2 }, &[("dlq.error", "x")])
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidInput);

    // Through the object-safe trait of fredkit-core.
    let dyn_producer: Arc<dyn StreamProducer> = Arc::new(producer.clone());
    let raw_id = dyn_producer
        .publish_bytes(
            "jobs",
            MsgPack.encode(&Job { n: 3 }).unwrap(),
            &[("type", "job.raw")],
        )
        .await
        .unwrap();
    assert!(StreamId::new(raw_id.clone()) > id);
    let err = dyn_producer
        .publish_bytes("jobs", bytes::Bytes::new(), &[("payload", "x")])
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidInput);

    // A batch with headers per value; a reserved name fails that value only.
    let batch = producer
        .publish_batch_with(&[
            (&Job { n: 4 }, &[(TRACE_ID_HEADER, "t-4")][..]),
            (&Job { n: 5 }, &[("payload", "x")][..]),
            (
                &Job { n: 6 },
                &[(TRACE_ID_HEADER, "t-6"), ("tenant", "t2")][..],
            ),
        ])
        .await;
    assert!(batch[0].is_ok() && batch[2].is_ok());
    assert_eq!(
        batch[1].as_ref().unwrap_err().kind(),
        ErrorKind::InvalidInput
    );

    wait_until("all four handled", || {
        let got = Arc::clone(&got);
        async move { got.lock().unwrap().len() == 4 }
    })
    .await;
    assert!(worker.is_running());
    worker.shutdown().await;
    let got = got.lock().unwrap();
    let first = got.iter().find(|m| m.payload.n == 1).unwrap();
    assert_eq!(first.id, id);
    assert_eq!(first.trace_id(), Some("abc123"));
    assert_eq!(first.event_type(), Some("job.created"));
    assert_eq!(first.header("tenant"), Some("t1"));
    assert_eq!(first.deliveries, 1);
    let third = got.iter().find(|m| m.payload.n == 3).unwrap();
    assert_eq!(third.id.as_str(), raw_id);
    assert_eq!(
        third.event_type(),
        Some("job.raw"),
        "a per-publish type wins"
    );
    let sixth = got.iter().find(|m| m.payload.n == 6).unwrap();
    assert_eq!(sixth.trace_id(), Some("t-6"));
    assert_eq!(sixth.header("tenant"), Some("t2"));
    assert_eq!(sixth.event_type(), Some("job.created"));
    assert_eq!(
        got.iter().find(|m| m.payload.n == 4).unwrap().trace_id(),
        Some("t-4")
    );
    assert!(got.iter().all(|m| m.payload.n != 5));
    assert_eq!(producer.metrics().snapshot().published, 4);
    assert_eq!(producer.metrics().snapshot().publish_errors, 4);
}

#[rstest]
#[case::standalone(Topology::Standalone)]
#[case::cluster(Topology::Cluster)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishing_trims_by_length_and_by_age(#[case] topology: Topology) {
    let redis = connect(&shared_url(topology).unwrap()).await;
    let jobs: Vec<Job> = (0..1000).map(|n| Job { n }).collect();

    let by_len = keys("trim_len");
    let producer = Producer::<Job>::with_config(
        &redis,
        by_len.clone(),
        ProducerConfig::builder()
            .trim(Trim::MaxLen(50))
            .build()
            .unwrap(),
        MsgPack,
    );
    let ids: Vec<StreamId> = producer
        .publish_batch(&jobs)
        .await
        .into_iter()
        .map(|r| r.unwrap())
        .collect();
    assert!(
        ids.windows(2).all(|w| w[0] < w[1]),
        "ids grow within a batch"
    );
    let len: u64 = redis.client().xlen(by_len.stream()).await.unwrap();
    // MAXLEN ~ trims whole nodes (100 entries by default).
    assert!((50..=150).contains(&len), "len {len}");

    let by_age = keys("trim_age");
    let producer = Producer::<Job>::with_config(
        &redis,
        by_age.clone(),
        ProducerConfig::builder()
            .trim(Trim::MaxAge(Duration::from_millis(50)))
            .build()
            .unwrap(),
        MsgPack,
    );
    for r in producer.publish_batch(&jobs[..300]).await {
        r.unwrap();
    }
    tokio::time::sleep(Duration::from_millis(120)).await;
    producer.publish(&Job { n: 1 }).await.unwrap();
    let len: u64 = redis.client().xlen(by_age.stream()).await.unwrap();
    assert!(
        len <= 101,
        "entries older than 50 ms trimmed (in whole nodes): {len}"
    );

    let untrimmed = keys("trim_none");
    let producer = Producer::<Job>::with_config(
        &redis,
        untrimmed.clone(),
        ProducerConfig::builder().trim(Trim::None).build().unwrap(),
        MsgPack,
    );
    for r in producer.publish_batch(&jobs).await {
        r.unwrap();
    }
    let len: u64 = redis.client().xlen(untrimmed.stream()).await.unwrap();
    assert_eq!(len, 1000);
}

#[rstest]
#[case::standalone(Topology::Standalone)]
#[case::cluster(Topology::Cluster)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handler_panics_and_timeouts_are_failed_deliveries_that_are_retried(
    #[case] topology: Topology,
) {
    let redis = connect(&shared_url(topology).unwrap()).await;
    let keys = keys("panic_timeout");
    let admin = StreamAdmin::new(&redis, keys.clone());
    let producer = Producer::<Job>::new(&redis, keys.clone());
    let ok: Arc<Mutex<HashMap<u64, Vec<u64>>>> = Arc::default();
    let record = Arc::clone(&ok);
    let worker = Worker::start(
        &redis,
        keys.clone(),
        fast("g").build().unwrap(),
        move |m: Message<Job>| {
            let record = Arc::clone(&record);
            async move {
                if m.deliveries == 1 {
                    match m.payload.n {
                        1 => panic!("boom"),
                        2 => tokio::time::sleep(Duration::from_secs(5)).await,
                        _ => {}
                    }
                }
                record
                    .lock()
                    .unwrap()
                    .entry(m.payload.n)
                    .or_default()
                    .push(m.deliveries);
                Ok::<(), String>(())
            }
        },
    )
    .await
    .unwrap();
    for n in 0..3 {
        producer.publish(&Job { n }).await.unwrap();
    }
    wait_until("all three handled", || {
        let ok = Arc::clone(&ok);
        let admin = admin.clone();
        async move { ok.lock().unwrap().len() == 3 && pending(&admin, "g").await == 0 }
    })
    .await;
    let report = worker.shutdown().await;
    let ok = ok.lock().unwrap().clone();
    assert_eq!(ok[&0], vec![1]);
    assert_eq!(ok[&1], vec![2], "the panicking delivery was retried once");
    assert_eq!(
        ok[&2],
        vec![2],
        "the timed-out delivery was cancelled and retried"
    );
    assert_eq!(report.metrics.failed, 2);
    assert_eq!(report.metrics.retried, 2);
    assert_eq!(report.metrics.handled, 3);
    assert_eq!(admin.dead_letter_count().await.unwrap(), 0);
}

#[rstest]
#[case::standalone(Topology::Standalone)]
#[case::cluster(Topology::Cluster)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entries_whose_consumers_keep_crashing_are_dead_lettered_by_the_claim(
    #[case] topology: Topology,
) {
    let redis = connect(&shared_url(topology).unwrap()).await;
    let keys = keys("crash_loop");
    let admin = StreamAdmin::new(&redis, keys.clone());
    admin.create_group("g", StartFrom::Beginning).await.unwrap();
    let producer = Producer::<Job>::new(&redis, keys.clone());
    let id = producer.publish(&Job { n: 9 }).await.unwrap();
    // Three deliveries that never reported (consumers that died mid-handler).
    let _: Value = redis
        .client()
        .xreadgroup("g", "ghost-1", Some(1), None, false, keys.stream(), ">")
        .await
        .unwrap();
    for ghost in ["ghost-2", "ghost-3"] {
        let _: Value = redis
            .client()
            .xclaim(
                keys.stream(),
                "g",
                ghost,
                0,
                id.as_str(),
                None,
                None,
                None,
                false,
                false,
            )
            .await
            .unwrap();
    }
    let handled = Arc::new(AtomicU64::new(0));
    let h = Arc::clone(&handled);
    let worker = Worker::start(
        &redis,
        keys.clone(),
        fast("g").max_deliveries(3).build().unwrap(),
        move |_m: Message<Job>| {
            h.fetch_add(1, Ordering::SeqCst);
            async { Ok::<(), String>(()) }
        },
    )
    .await
    .unwrap();
    wait_until("the crash-looping entry is dead-lettered", || {
        let admin = admin.clone();
        async move { admin.dead_letter_count().await.unwrap() == 1 }
    })
    .await;
    let report = worker.shutdown().await;
    let dead = admin.dead_letters(10).await.unwrap();
    assert_eq!(dead[0].original_id.as_ref(), Some(&id));
    assert_eq!(dead[0].deliveries, 4, "the claim was the fourth delivery");
    assert!(
        dead[0].error.contains("without an outcome"),
        "{:?}",
        dead[0]
    );
    assert_eq!(
        handled.load(Ordering::SeqCst),
        0,
        "never handed to the handler"
    );
    assert_eq!(report.metrics.dead_lettered, 1);
    assert_eq!(pending(&admin, "g").await, 0);
}

#[rstest]
#[case::standalone(Topology::Standalone)]
#[case::cluster(Topology::Cluster)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_deadline_cancels_slow_handlers_whose_entries_stay_pending(
    #[case] topology: Topology,
) {
    let redis = connect(&shared_url(topology).unwrap()).await;
    let keys = keys("shutdown_deadline");
    let admin = StreamAdmin::new(&redis, keys.clone());
    let producer = Producer::<Job>::new(&redis, keys.clone());
    let started = Arc::new(AtomicU64::new(0));
    let s = Arc::clone(&started);
    let config = fast("g")
        .handler_timeout(Duration::from_secs(20))
        .min_idle(Duration::from_secs(30))
        .shutdown_timeout(Duration::from_millis(200))
        .build()
        .unwrap();
    let worker = Worker::start(&redis, keys.clone(), config, move |_m: Message<Job>| {
        s.fetch_add(1, Ordering::SeqCst);
        async {
            tokio::time::sleep(Duration::from_secs(10)).await;
            Ok::<(), String>(())
        }
    })
    .await
    .unwrap();
    for n in 0..3 {
        producer.publish(&Job { n }).await.unwrap();
    }
    wait_until("three handlers running", || {
        let started = Arc::clone(&started);
        async move { started.load(Ordering::SeqCst) == 3 }
    })
    .await;
    let report = worker.shutdown().await;
    assert_eq!(report.in_flight_at_stop, 3);
    assert_eq!(report.abandoned, 3);
    assert_eq!(report.metrics.handled, 0);
    assert!(!report.consumer_removed, "it still owns pending entries");
    assert_eq!(
        pending(&admin, "g").await,
        3,
        "abandoned entries stay pending, nothing lost"
    );
}

#[tokio::test]
async fn public_types_and_futures_are_send_and_sync() {
    fn send_sync<T: Send + Sync>(_: &T) {}
    fn send<T: Send>(_: T) {}
    fn send_sync_type<T: Send + Sync>() {}
    send_sync_type::<Worker<Job>>();
    send_sync_type::<fredkit_streams::ShutdownReport>();
    // Lazy connect: nothing is contacted.
    let redis = fredkit_conn::Redis::from_url("redis://127.0.0.1:1")
        .await
        .unwrap();
    let keys = keys("types");
    let producer = Producer::<Job>::new(&redis, keys.clone());
    send_sync(&producer);
    send_sync(&StreamAdmin::new(&redis, keys.clone()));
    send(producer.publish(&Job { n: 1 }));
    send(producer.publish_batch(&[]));
    let admin = StreamAdmin::new(&redis, keys.clone());
    send(admin.replay_dead_letters(1));
    send(Worker::start(
        &redis,
        keys,
        fast("g").build().unwrap(),
        |_m: Message<Job>| async { Ok::<(), String>(()) },
    ));
}

#[rstest]
#[case::standalone(Topology::Standalone)]
#[case::cluster(Topology::Cluster)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replayed_dead_letter_is_handled_again_only_by_the_group_that_gave_up(
    #[case] topology: Topology,
) {
    let redis = connect(&shared_url(topology).unwrap()).await;
    let keys = keys("replay_groups");
    let admin = StreamAdmin::new(&redis, keys.clone());
    let producer = Producer::<Job>::new(&redis, keys.clone());
    let healed = Arc::new(AtomicBool::new(false));
    let billing: Counts = Arc::default();
    let shipping: Counts = Arc::default();
    let (h, record) = (Arc::clone(&healed), Arc::clone(&billing));
    let billing_worker = Worker::start(
        &redis,
        keys.clone(),
        fast("billing").max_deliveries(1).build().unwrap(),
        move |m: Message<Job>| {
            let poison = m.payload.n == 13 && !h.load(Ordering::SeqCst);
            if !poison {
                bump(&record, m.payload.n);
            }
            async move {
                if poison {
                    Err("billing cannot charge job 13")
                } else {
                    Ok(())
                }
            }
        },
    )
    .await
    .unwrap();
    let record = Arc::clone(&shipping);
    let shipping_worker = Worker::start(
        &redis,
        keys.clone(),
        fast("shipping").build().unwrap(),
        move |m: Message<Job>| {
            bump(&record, m.payload.n);
            async { Ok::<(), String>(()) }
        },
    )
    .await
    .unwrap();
    producer.publish(&Job { n: 13 }).await.unwrap();
    producer.publish(&Job { n: 14 }).await.unwrap();
    wait_until("billing dead-lettered 13, shipping handled both", || {
        let admin = admin.clone();
        let shipping = Arc::clone(&shipping);
        async move {
            admin.dead_letter_count().await.unwrap() == 1 && shipping.lock().unwrap().len() == 2
        }
    })
    .await;

    healed.store(true, Ordering::SeqCst);
    let replay = admin.replay_dead_letters(10).await.unwrap();
    assert_eq!(replay.replayed, 1);
    let new_id = replay.new_ids[0].clone();
    wait_until(
        "both groups read the replayed entry, nothing pending",
        || {
            let admin = admin.clone();
            let billing = Arc::clone(&billing);
            let new_id = new_id.clone();
            async move {
                let groups = admin.groups().await.unwrap();
                billing.lock().unwrap().contains_key(&13)
                    && groups.len() == 2
                    && groups.iter().all(|g| {
                        g.pending == 0 && g.last_delivered_id.as_ref().is_some_and(|l| *l >= new_id)
                    })
            }
        },
    )
    .await;
    let b = billing_worker.shutdown().await;
    let s = shipping_worker.shutdown().await;
    assert_eq!(
        billing.lock().unwrap()[&13],
        1,
        "billing handled the replay"
    );
    assert_eq!(
        shipping.lock().unwrap()[&13],
        1,
        "shipping had handled job 13 already; the replay is not for it"
    );
    assert_eq!(s.metrics.handled, 2);
    assert_eq!(s.metrics.skipped_replays, 1);
    assert_eq!(b.metrics.skipped_replays, 0);
    assert_eq!(admin.dead_letter_count().await.unwrap(), 0);
}

#[rstest]
#[case::standalone(Topology::Standalone)]
#[case::cluster(Topology::Cluster)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn huge_timeouts_mean_wait_forever_and_never_panic_the_worker(#[case] topology: Topology) {
    let redis = connect(&shared_url(topology).unwrap()).await;
    let keys = keys("huge_timeouts");
    let admin = StreamAdmin::new(&redis, keys.clone());
    let producer = Producer::<Job>::new(&redis, keys.clone());
    let config = fredkit_streams::WorkerConfig::builder("g")
        .block(Duration::from_millis(100))
        .handler_timeout(Duration::MAX - Duration::from_secs(1))
        .min_idle(Duration::MAX)
        .claim_interval(Duration::from_millis(100))
        .shutdown_timeout(Duration::MAX)
        .build()
        .unwrap();
    let handled: Counts = Arc::default();
    let record = Arc::clone(&handled);
    let worker = Worker::start(&redis, keys.clone(), config, move |m: Message<Job>| {
        let record = Arc::clone(&record);
        async move {
            tokio::time::sleep(Duration::from_millis(50)).await;
            bump(&record, m.payload.n);
            Ok::<(), String>(())
        }
    })
    .await
    .unwrap();
    for n in 0..3 {
        producer.publish(&Job { n }).await.unwrap();
    }
    wait_until("three handled", || {
        let handled = Arc::clone(&handled);
        async move { handled.lock().unwrap().len() == 3 }
    })
    .await;
    let report = worker.shutdown().await;
    assert_eq!(report.metrics.handled, 3, "{report:?}");
    assert_eq!(report.metrics.read_errors, 0, "{report:?}");
    assert_eq!(report.unacked, 0);
    assert_eq!(pending(&admin, "g").await, 0);
}

#[rstest]
#[case::standalone(Topology::Standalone)]
#[case::cluster(Topology::Cluster)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_entry_with_thousands_of_fields_is_dead_lettered_and_does_not_block_retries(
    #[case] topology: Topology,
) {
    let redis = connect(&shared_url(topology).unwrap()).await;
    let keys = keys("wide_entry");
    let admin = StreamAdmin::new(&redis, keys.clone());
    let producer = Producer::<Job>::new(&redis, keys.clone());
    // More fields than a Lua script can pass to one redis.call (unpack limit).
    let mut fields: Vec<(String, Value)> = vec![(
        "payload".into(),
        Value::Bytes(bytes::Bytes::from_static(b"\xc1 garbage")),
    )];
    for i in 0..4100 {
        fields.push((format!("h{i}"), Value::from("v")));
    }
    let wide: String = redis
        .client()
        .xadd(keys.stream(), false, None, "*", fields)
        .await
        .unwrap();
    for n in 0..3 {
        producer.publish(&Job { n }).await.unwrap();
    }
    let ok: Arc<Mutex<HashMap<u64, Vec<u64>>>> = Arc::default();
    let record = Arc::clone(&ok);
    let worker = Worker::start(
        &redis,
        keys.clone(),
        fast("g").max_deliveries(3).build().unwrap(),
        move |m: Message<Job>| {
            let first = m.deliveries == 1;
            if !first {
                record
                    .lock()
                    .unwrap()
                    .entry(m.payload.n)
                    .or_default()
                    .push(m.deliveries);
            }
            // Every job fails once: its retry needs the claim to work.
            async move {
                if first {
                    Err("first attempt fails")
                } else {
                    Ok(())
                }
            }
        },
    )
    .await
    .unwrap();
    wait_until("the wide entry dead-lettered, every job retried", || {
        let ok = Arc::clone(&ok);
        let admin = admin.clone();
        async move {
            ok.lock().unwrap().len() == 3
                && matches!(admin.dead_letter_count().await, Ok(1))
                && pending(&admin, "g").await == 0
        }
    })
    .await;
    let report = worker.shutdown().await;
    let dead = admin.dead_letters(10).await.unwrap();
    assert_eq!(
        dead[0].original_id.as_ref().map(StreamId::as_str),
        Some(wide.as_str())
    );
    assert_eq!(dead[0].payload.as_deref(), Some(&b"\xc1 garbage"[..]));
    assert!(dead[0].error.contains("decode"), "{}", dead[0].error);
    assert!(!dead[0].headers.is_empty());
    assert_eq!(report.metrics.dead_lettered, 1);
    assert_eq!(report.metrics.handled, 3);

    // The same through the claim: a wide entry whose consumers kept dying.
    let keys = common::keys("wide_claimed");
    let admin = StreamAdmin::new(&redis, keys.clone());
    admin.create_group("g", StartFrom::Beginning).await.unwrap();
    let mut fields: Vec<(String, Value)> = vec![(
        "payload".into(),
        Value::Bytes(MsgPack.encode(&Job { n: 7 }).unwrap()),
    )];
    for i in 0..4100 {
        fields.push((format!("h{i}"), Value::from("v")));
    }
    let wide: String = redis
        .client()
        .xadd(keys.stream(), false, None, "*", fields)
        .await
        .unwrap();
    let _: Value = redis
        .client()
        .xreadgroup("g", "ghost-1", Some(1), None, false, keys.stream(), ">")
        .await
        .unwrap();
    let _: Value = redis
        .client()
        .xclaim(
            keys.stream(),
            "g",
            "ghost-2",
            0,
            wide.as_str(),
            None,
            None,
            None,
            false,
            false,
        )
        .await
        .unwrap();
    let worker = Worker::start(
        &redis,
        keys.clone(),
        fast("g").max_deliveries(2).build().unwrap(),
        |_m: Message<Job>| async { Ok::<(), String>(()) },
    )
    .await
    .unwrap();
    wait_until(
        "the wide crash-looping entry is dead-lettered by the claim",
        || {
            let admin = admin.clone();
            async move {
                matches!(admin.dead_letter_count().await, Ok(1)) && pending(&admin, "g").await == 0
            }
        },
    )
    .await;
    let report = worker.shutdown().await;
    let dead = admin.dead_letters(1).await.unwrap();
    assert_eq!(dead[0].decode::<Job, _>(&MsgPack).unwrap(), Job { n: 7 });
    assert!(
        dead[0].error.contains("without an outcome"),
        "{}",
        dead[0].error
    );
    assert_eq!(report.metrics.handled, 0);
}

#[rstest]
#[case::standalone(Topology::Standalone)]
#[case::cluster(Topology::Cluster)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_entry_that_cannot_be_dead_lettered_does_not_block_the_entries_claimed_with_it(
    #[case] topology: Topology,
) {
    let redis = connect(&shared_url(topology).unwrap()).await;
    let keys = keys("dlq_broken");
    let admin = StreamAdmin::new(&redis, keys.clone());
    admin.create_group("g", StartFrom::Beginning).await.unwrap();
    let producer = Producer::<Job>::new(&redis, keys.clone());
    let stuck = producer.publish(&Job { n: 99 }).await.unwrap();
    let mut ids = vec![stuck.clone()];
    for n in 0..3 {
        ids.push(producer.publish(&Job { n }).await.unwrap());
    }
    // A consumer that died with all four: the jobs were delivered twice, the
    // first entry many times (it kept crashing its consumers).
    let _: Value = redis
        .client()
        .xreadgroup("g", "ghost-1", Some(4), None, false, keys.stream(), ">")
        .await
        .unwrap();
    let _: Value = redis
        .client()
        .xclaim(
            keys.stream(),
            "g",
            "ghost-1",
            0,
            stuck.as_str(),
            None,
            None,
            Some(9),
            false,
            false,
        )
        .await
        .unwrap();
    // One XCLAIM: the four become idle at the same instant, so every claim
    // pass takes them together.
    let _: Value = redis
        .client()
        .xclaim(
            keys.stream(),
            "g",
            "ghost-2",
            0,
            ids.iter().map(StreamId::as_str).collect::<Vec<_>>(),
            Some(0),
            None,
            None,
            false,
            false,
        )
        .await
        .unwrap();
    // The dead-letter stream is broken (an operator wrote a string there):
    // the crash-looping entry cannot be dead-lettered.
    let _: () = redis
        .client()
        .set(keys.dead_letter(), "oops", None, None, false)
        .await
        .unwrap();
    let ok: Arc<Mutex<HashMap<u64, Vec<u64>>>> = Arc::default();
    let record = Arc::clone(&ok);
    let worker = Worker::start(
        &redis,
        keys.clone(),
        fast("g").max_deliveries(4).build().unwrap(),
        move |m: Message<Job>| {
            record
                .lock()
                .unwrap()
                .entry(m.payload.n)
                .or_default()
                .push(m.deliveries);
            async { Ok::<(), String>(()) }
        },
    )
    .await
    .unwrap();
    wait_until("the jobs claimed with the stuck entry are handled", || {
        let ok = Arc::clone(&ok);
        async move { ok.lock().unwrap().len() == 3 }
    })
    .await;
    let report = worker.shutdown().await;
    let ok = ok.lock().unwrap().clone();
    for n in 0..3 {
        assert_eq!(ok[&n], vec![3], "job {n}");
    }
    assert!(
        !ok.contains_key(&99),
        "an entry past max_deliveries is not handed out"
    );
    assert_eq!(report.metrics.handled, 3);
    assert!(report.metrics.dead_letter_errors >= 1, "{report:?}");
    // Nothing lost: the entry that could not be dead-lettered is still pending.
    let summary = admin.pending("g").await.unwrap();
    assert_eq!(summary.total, 1);
    assert_eq!(summary.oldest.as_ref(), Some(&stuck));
    let _: i64 = redis.client().del(keys.dead_letter()).await.unwrap();
}

#[rstest]
#[case::standalone(Topology::Standalone)]
#[case::cluster(Topology::Cluster)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_trimmed_by_the_bound_are_counted_not_silently_lost(
    #[case] topology: Topology,
) {
    const N: u64 = 250;
    let redis = connect(&shared_url(topology).unwrap()).await;
    let keys = keys("dlq_trimmed");
    let admin = StreamAdmin::new(&redis, keys.clone());
    let producer = Producer::<Job>::new(&redis, keys.clone());
    for r in producer
        .publish_batch(&(0..N).map(|n| Job { n }).collect::<Vec<_>>())
        .await
    {
        r.unwrap();
    }
    let worker = Worker::start(
        &redis,
        keys.clone(),
        fast("g")
            .max_deliveries(1)
            .dead_letter_max_len(10)
            .build()
            .unwrap(),
        |_m: Message<Job>| async { Err::<(), _>("poison") },
    )
    .await
    .unwrap();
    wait_until("every job dead-lettered", || {
        let m = worker.metrics();
        async move { m.dead_lettered == N }
    })
    .await;
    let report = worker.shutdown().await;
    let kept = admin.dead_letter_count().await.unwrap();
    assert!(kept < N, "the bound trimmed some ({kept} kept)");
    assert_eq!(
        report.metrics.dead_letters_trimmed + kept,
        N,
        "every dead letter is either kept or counted as trimmed: {report:?}"
    );
    // Paging through what is kept sees each dead letter once, in order.
    let mut seen: Vec<StreamId> = Vec::new();
    let mut page = admin.dead_letters(7).await.unwrap();
    while let Some(last) = page.last().map(|d| d.id.clone()) {
        seen.extend(page.iter().map(|d| d.id.clone()));
        page = admin.dead_letters_after(&last, 7).await.unwrap();
    }
    assert_eq!(seen.len() as u64, kept);
    assert!(seen.windows(2).all(|w| w[0] < w[1]));
    assert_eq!(pending(&admin, "g").await, 0);
}

#[rstest]
#[case::standalone(Topology::Standalone)]
#[case::cluster(Topology::Cluster)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consumers_left_behind_by_crashed_workers_are_removed_once_they_own_nothing(
    #[case] topology: Topology,
) {
    let redis = connect(&shared_url(topology).unwrap()).await;
    let keys = keys("dead_consumers");
    let admin = StreamAdmin::new(&redis, keys.clone());
    admin.create_group("g", StartFrom::Beginning).await.unwrap();
    let producer = Producer::<Job>::new(&redis, keys.clone());
    // Crashed workers: three owning nothing, one owning an entry.
    for ghost in ["ghost-1", "ghost-2", "ghost-3"] {
        let _: Value = redis
            .client()
            .xgroup_createconsumer(keys.stream(), "g", ghost)
            .await
            .unwrap();
    }
    producer.publish(&Job { n: 1 }).await.unwrap();
    let _: Value = redis
        .client()
        .xreadgroup("g", "ghost-4", Some(1), None, false, keys.stream(), ">")
        .await
        .unwrap();
    assert_eq!(admin.group("g").await.unwrap().unwrap().consumers, 4);
    let handled = Arc::new(AtomicU64::new(0));
    let h = Arc::clone(&handled);
    let worker = Worker::start(
        &redis,
        keys.clone(),
        fast("g").build().unwrap(),
        move |_m: Message<Job>| {
            h.fetch_add(1, Ordering::SeqCst);
            async { Ok::<(), String>(()) }
        },
    )
    .await
    .unwrap();
    wait_until("only the live worker is left in the group", || {
        let admin = admin.clone();
        let handled = Arc::clone(&handled);
        async move {
            handled.load(Ordering::SeqCst) == 1
                && matches!(admin.group("g").await, Ok(Some(g)) if g.consumers == 1 && g.pending == 0)
        }
    })
    .await;
    let m = worker.metrics();
    assert_eq!(m.consumers_removed, 4, "{m:?}");
    let report = worker.shutdown().await;
    assert!(report.consumer_removed);
    assert_eq!(admin.group("g").await.unwrap().unwrap().consumers, 0);
}

/// #17: a `WorkerHandle` is a cheap `Clone` with the counters, and the
/// worker shuts down from shared references: the `Worker` in an `Arc` and a
/// handle call `shutdown` at once while handlers are in flight; both get the
/// same report (nothing abandoned, nothing unacknowledged, every handled
/// entry acknowledged, nothing pending), a later call gets it again, and
/// what was never read is handled by the next worker exactly once.
#[rstest]
#[case::standalone(Topology::Standalone)]
#[case::cluster(Topology::Cluster)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_handle_reads_metrics_and_shutdown_from_shared_references_reports_once(
    #[case] topology: Topology,
) {
    const N: u64 = 40;
    let redis = connect(&shared_url(topology).unwrap()).await;
    let keys = keys("handle");
    let admin = StreamAdmin::new(&redis, keys.clone());
    let producer = Producer::<Job>::new(&redis, keys.clone());
    for r in producer
        .publish_batch(&(0..N).map(|n| Job { n }).collect::<Vec<_>>())
        .await
    {
        r.unwrap();
    }
    let completed: Counts = Arc::default();
    let config = fast("g")
        .concurrency(8)
        .count(8)
        .handler_timeout(Duration::from_secs(5))
        .min_idle(Duration::from_secs(10))
        .build()
        .unwrap();
    let c = Arc::clone(&completed);
    let worker = Worker::start(&redis, keys.clone(), config, move |m: Message<Job>| {
        let c = Arc::clone(&c);
        async move {
            tokio::time::sleep(Duration::from_millis(200)).await;
            bump(&c, m.payload.n);
            Ok::<(), String>(())
        }
    })
    .await
    .unwrap();
    let worker = Arc::new(worker);
    let handle = worker.handle();
    let other = handle.clone();
    assert!(handle.is_running());
    assert_eq!(handle.consumer(), worker.consumer());
    // The counters, read through a clone of the handle.
    wait_until("8 handled, read through the handle", || {
        let h = other.clone();
        async move { h.metrics().handled >= 8 }
    })
    .await;
    let (w, h) = (Arc::clone(&worker), other.clone());
    let by_worker = tokio::spawn(async move { w.shutdown().await });
    let by_handle = tokio::spawn(async move { h.shutdown().await });
    let (a, b) = (by_worker.await.unwrap(), by_handle.await.unwrap());
    assert_eq!(a, b, "one shutdown, one report for every caller");
    assert_eq!(a.abandoned, 0, "{a:?}");
    assert_eq!(a.unacked, 0, "{a:?}");
    let done = completed.lock().unwrap().clone();
    assert!(done.values().all(|c| *c == 1));
    assert_eq!(a.metrics.handled, done.len() as u64, "{a:?}");
    assert_eq!(a.metrics.acked, done.len() as u64, "{a:?}");
    assert_eq!(pending(&admin, "g").await, 0, "no message is half-done");
    assert!(!handle.is_running());
    assert_eq!(
        handle.shutdown().await,
        a,
        "a later call gets the same report"
    );
    assert_eq!(worker.close().await, a, "close is the same shutdown");

    // What was never read is still there for the next worker.
    let rest: Counts = Arc::default();
    let r = Arc::clone(&rest);
    let next = Worker::start(
        &redis,
        keys.clone(),
        fast("g").build().unwrap(),
        move |m: Message<Job>| {
            bump(&r, m.payload.n);
            async { Ok::<(), String>(()) }
        },
    )
    .await
    .unwrap();
    wait_until("the rest handled", || {
        let rest = Arc::clone(&rest);
        let n = done.len();
        async move { rest.lock().unwrap().len() + n == N as usize }
    })
    .await;
    next.shutdown().await;
    let rest = rest.lock().unwrap();
    assert!(rest.keys().all(|n| !done.contains_key(n)));
    assert!(rest.values().all(|c| *c == 1));
}
