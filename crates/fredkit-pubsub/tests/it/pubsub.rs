//! fredkit-pubsub against real servers, standalone and cluster.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use fredkit_conn::Redis;
use fredkit_pubsub::{Delivery, Mode, PubSubOptions, Publisher, Subscriber, Subscription};
use fredkit_testkit::{
    shared_url, unique_prefix, ClusterOptions, RedisCluster, RedisServer, Topology,
};
use futures::StreamExt;
use rstest::rstest;
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// Bounds every wait so a broken build fails instead of hanging.
const DEADLINE: Duration = Duration::from_secs(15);
/// Bounds recovery after a fault (a sentinel demotes the old primary ~10 s
/// after a failover).
const FAULT_DEADLINE: Duration = Duration::from_secs(30);

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Order {
    id: u64,
    item: String,
}

async fn connect(url: &str) -> Redis {
    fredkit_testkit::connect(url).await.unwrap()
}

/// The next message, skipping nothing: panics on lag/gap/timeout.
async fn next_message<T: std::fmt::Debug>(sub: &mut Subscription<T>) -> fredkit_pubsub::Message<T> {
    match tokio::time::timeout(DEADLINE, sub.next())
        .await
        .expect("no message within deadline")
    {
        Some(Delivery::Message(m)) => m,
        other => panic!("expected a message, got {other:?}"),
    }
}

#[rstest]
#[case::standalone(Topology::Standalone)]
#[case::cluster(Topology::Cluster)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribing_on_an_idle_server_completes_promptly(#[case] topology: Topology) {
    let redis = connect(&shared_url(topology).unwrap()).await;
    let subscriber = tokio::time::timeout(DEADLINE, Subscriber::new(&redis))
        .await
        .expect("Subscriber::new hung")
        .unwrap();
    let channel = format!("{}idle", unique_prefix("pubsub_idle"));
    // Nothing is published anywhere: the SUBSCRIBE confirmation alone must return.
    for i in 0..3 {
        let sub = tokio::time::timeout(
            DEADLINE,
            subscriber.subscribe::<u64>(&format!("{channel}{i}")),
        )
        .await
        .expect("subscribe hung on an idle server")
        .unwrap();
        drop(sub);
    }
}

#[rstest]
#[case::standalone(Topology::Standalone)]
#[case::cluster(Topology::Cluster)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn typed_messages_round_trip_to_every_local_receiver(#[case] topology: Topology) {
    let redis = connect(&shared_url(topology).unwrap()).await;
    let subscriber = Subscriber::new(&redis).await.unwrap();
    let publisher = Publisher::new(&redis);
    assert_eq!(subscriber.is_sharded(), topology == Topology::Cluster);
    assert_eq!(publisher.is_sharded(), topology == Topology::Cluster);
    let channel = format!("{}orders", unique_prefix("pubsub_typed"));
    let mut receivers = Vec::new();
    for _ in 0..3 {
        receivers.push(subscriber.subscribe::<Order>(&channel).await.unwrap());
    }
    let orders: Vec<Order> = (0..50)
        .map(|id| Order {
            id,
            item: format!("item-{id}"),
        })
        .collect();
    for o in &orders {
        let n = publisher.publish(&channel, o).await.unwrap();
        assert_eq!(
            n, 1,
            "one subscriber connection, however many local receivers"
        );
    }
    for r in &mut receivers {
        for o in &orders {
            let m = next_message(r).await;
            assert_eq!(m.channel, channel);
            assert_eq!(&m.payload.unwrap(), o);
        }
    }
    let metrics = subscriber.metrics();
    assert_eq!(metrics.received, 50);
    assert_eq!(metrics.decode_errors, 0);
    assert_eq!(publisher.metrics().published, 50);
}

#[rstest]
#[case::standalone(Topology::Standalone)]
#[case::cluster(Topology::Cluster)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pattern_subscriptions_get_matching_channels_only(#[case] topology: Topology) {
    let redis = connect(&shared_url(topology).unwrap()).await;
    let plain = PubSubOptions::default().mode(Mode::Plain);
    let subscriber = Subscriber::with_codec(&redis, fredkit_core::MsgPack, plain.clone())
        .await
        .unwrap();
    let publisher = Publisher::with_codec(&redis, fredkit_core::MsgPack, plain);
    let p = unique_prefix("pubsub_pattern");
    let mut news = subscriber
        .psubscribe::<String>(&format!("{p}news.*"))
        .await
        .unwrap();
    let mut all = subscriber
        .psubscribe::<String>(&format!("{p}*"))
        .await
        .unwrap();
    publisher
        .publish(&format!("{p}news.art"), "a")
        .await
        .unwrap();
    publisher
        .publish(&format!("{p}weather"), "w")
        .await
        .unwrap();
    publisher
        .publish(&format!("{p}news.tech"), "t")
        .await
        .unwrap();

    let mut got_news = Vec::new();
    for _ in 0..2 {
        let m = next_message(&mut news).await;
        got_news.push((m.channel, m.payload.unwrap()));
    }
    got_news.sort();
    assert_eq!(
        got_news,
        vec![
            (format!("{p}news.art"), "a".to_string()),
            (format!("{p}news.tech"), "t".to_string())
        ]
    );
    // Per channel, order is kept; across channels a cluster promises none.
    let mut got = Vec::new();
    for _ in 0..3 {
        let m = next_message(&mut all).await;
        got.push((m.channel, m.payload.unwrap()));
    }
    got.sort();
    let mut want = vec![
        (format!("{p}news.art"), "a".to_string()),
        (format!("{p}news.tech"), "t".to_string()),
        (format!("{p}weather"), "w".to_string()),
    ];
    want.sort();
    assert_eq!(got, want, "each matching message exactly once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn patterns_are_refused_in_sharded_mode_with_a_clear_error() {
    let redis = connect(&shared_url(Topology::Cluster).unwrap()).await;
    let subscriber = Subscriber::new(&redis).await.unwrap();
    let err = subscriber.psubscribe::<u64>("x*").await.unwrap_err();
    assert_eq!(err.kind(), fredkit_core::ErrorKind::Config);
    assert!(err.to_string().contains("Mode::Plain"), "{err}");
}

#[rstest]
#[case::standalone(Topology::Standalone)]
#[case::cluster(Topology::Cluster)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_that_never_reads_does_not_stop_the_others(#[case] topology: Topology) {
    let redis = connect(&shared_url(topology).unwrap()).await;
    let subscriber = Subscriber::new(&redis).await.unwrap();
    let publisher = Publisher::new(&redis);
    let channel = format!("{}firehose", unique_prefix("pubsub_slow"));
    let _never_reads = subscriber.subscribe::<u32>(&channel).await.unwrap();
    let readers: Vec<_> = (0..2)
        .map(|_| {
            let subscriber = subscriber.clone();
            let channel = channel.clone();
            async move { subscriber.subscribe::<u32>(&channel).await.unwrap() }
        })
        .collect();
    let readers = futures::future::join_all(readers).await;
    let tasks: Vec<_> = readers
        .into_iter()
        .map(|mut r| {
            tokio::spawn(async move {
                let mut expected = 0u32;
                while expected < 10_000 {
                    match tokio::time::timeout(DEADLINE, r.next())
                        .await
                        .expect("stalled")
                    {
                        Some(Delivery::Message(m)) => {
                            assert_eq!(m.payload.unwrap(), expected, "in order, none missing");
                            expected += 1;
                        }
                        other => panic!("reader got {other:?} at {expected}"),
                    }
                }
                expected
            })
        })
        .collect();
    for i in 0..10_000u32 {
        publisher.publish(&channel, &i).await.unwrap();
    }
    for t in tasks {
        assert_eq!(t.await.unwrap(), 10_000);
    }
}

#[rstest]
#[case::standalone(Topology::Standalone)]
#[case::cluster(Topology::Cluster)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_garbage_payload_is_one_decode_error_and_the_stream_goes_on(#[case] topology: Topology) {
    let redis = connect(&shared_url(topology).unwrap()).await;
    let subscriber = Subscriber::new(&redis).await.unwrap();
    let publisher = Publisher::new(&redis);
    let channel = format!("{}mixed", unique_prefix("pubsub_garbage"));
    let mut sub = subscriber.subscribe::<Order>(&channel).await.unwrap();
    publisher
        .publish_bytes(&channel, vec![0xc1, 0xff, 0x00])
        .await
        .unwrap();
    publisher
        .publish(&channel, &"a string, not an Order")
        .await
        .unwrap();
    let good = Order {
        id: 7,
        item: "ok".into(),
    };
    publisher.publish(&channel, &good).await.unwrap();

    let e1 = next_message(&mut sub).await.payload.unwrap_err();
    assert_eq!(e1.kind(), fredkit_core::ErrorKind::Codec);
    let e2 = next_message(&mut sub).await.payload.unwrap_err();
    assert_eq!(e2.kind(), fredkit_core::ErrorKind::Codec);
    assert_eq!(next_message(&mut sub).await.payload.unwrap(), good);
    assert_eq!(subscriber.metrics().decode_errors, 2);
}

/// After a fault: the gap counter rises above `gaps_before`, a Gap delivery
/// shows up in the stream, and a message published after it arrives.
/// Publishes repeatedly because resubscription may finish a moment after the
/// publisher can write again.
async fn gap_reported_then_messages_flow(
    sub: &mut Subscription<u64>,
    subscriber: &Subscriber,
    publisher: &Publisher,
    channel: &str,
    gaps_before: u64,
) {
    let start = std::time::Instant::now();
    let mut gaps = subscriber.gaps();
    while *gaps.borrow_and_update() <= gaps_before {
        assert!(
            start.elapsed() < FAULT_DEADLINE,
            "no gap event after the fault"
        );
        let _ = tokio::time::timeout(Duration::from_millis(200), gaps.changed()).await;
    }
    let mut saw_gap = false;
    loop {
        assert!(
            start.elapsed() < FAULT_DEADLINE,
            "no message after the gap (gap seen: {saw_gap})"
        );
        if saw_gap {
            let _ = publisher.publish(channel, &4242u64).await;
        }
        match tokio::time::timeout(Duration::from_millis(200), sub.next()).await {
            Ok(Some(Delivery::Gap)) => saw_gap = true,
            Ok(Some(Delivery::Message(m))) if saw_gap && m.payload.as_ref().ok() == Some(&4242) => {
                return
            }
            Ok(None) => panic!("stream ended"),
            _ => {}
        }
    }
}

async fn publish_until_ok(publisher: &Publisher, channel: &str) {
    let start = std::time::Instant::now();
    while publisher.publish(channel, &0u64).await.is_err() {
        assert!(start.elapsed() < DEADLINE, "publisher never recovered");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn standalone_client_kill_of_the_subscriber_resubscribes_and_reports_the_gap() {
    let server = RedisServer::start().unwrap();
    let redis = connect(&server.url()).await;
    let subscriber = Subscriber::new(&redis).await.unwrap();
    let publisher = Publisher::new(&redis);
    let mut sub = subscriber.subscribe::<u64>("ch").await.unwrap();
    publisher.publish("ch", &1u64).await.unwrap();
    assert_eq!(next_message(&mut sub).await.payload.unwrap(), 1);

    let before = *subscriber.gaps().borrow();
    server
        .command(&["CLIENT", "KILL", "TYPE", "pubsub"])
        .unwrap();
    gap_reported_then_messages_flow(&mut sub, &subscriber, &publisher, "ch", before).await;
    assert!(subscriber.metrics().resubscribes >= 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn standalone_server_restart_resubscribes_and_reports_the_gap() {
    let mut server = RedisServer::start().unwrap();
    let redis = connect(&server.url()).await;
    let subscriber = Subscriber::new(&redis).await.unwrap();
    let publisher = Publisher::new(&redis);
    let mut sub = subscriber.subscribe::<u64>("ch").await.unwrap();
    let before = *subscriber.gaps().borrow();
    server.kill().unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    server.restart().unwrap();
    publish_until_ok(&publisher, "other").await;
    gap_reported_then_messages_flow(&mut sub, &subscriber, &publisher, "ch", before).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_client_kill_and_master_restart_resubscribe_and_report_the_gap() {
    let mut cluster = RedisCluster::start(ClusterOptions::default()).unwrap();
    let redis = connect(&cluster.url()).await;
    let subscriber = Subscriber::new(&redis).await.unwrap();
    let publisher = Publisher::new(&redis);
    let channel = "orders";
    let mut sub = subscriber.subscribe::<u64>(channel).await.unwrap();
    publisher.publish(channel, &1u64).await.unwrap();
    assert_eq!(next_message(&mut sub).await.payload.unwrap(), 1);

    let before = *subscriber.gaps().borrow();
    for m in cluster.masters() {
        m.command(&["CLIENT", "KILL", "TYPE", "pubsub"]).unwrap();
    }
    gap_reported_then_messages_flow(&mut sub, &subscriber, &publisher, channel, before).await;

    // Restart the master that owns the channel's slot, on the same port.
    let owner = cluster
        .master_index_for_slot(fredkit_testkit::key_slot(channel.as_bytes()))
        .unwrap();
    // Let the gaps of the CLIENT KILL round settle before counting again.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = *subscriber.gaps().borrow();
    cluster.masters_mut()[owner].kill().unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    cluster.masters_mut()[owner].restart().unwrap();
    cluster.wait_healthy(DEADLINE).unwrap();
    publish_until_ok(&publisher, channel).await;
    gap_reported_then_messages_flow(&mut sub, &subscriber, &publisher, channel, before).await;
}

#[rstest]
#[case::standalone(Topology::Standalone)]
#[case::cluster(Topology::Cluster)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_the_last_receiver_unsubscribes(#[case] topology: Topology) {
    let redis = connect(&shared_url(topology).unwrap()).await;
    let subscriber = Subscriber::new(&redis).await.unwrap();
    let publisher = Publisher::new(&redis);
    let channel = format!("{}drop", unique_prefix("pubsub_drop"));
    let a = subscriber.subscribe::<u64>(&channel).await.unwrap();
    let b = subscriber.subscribe::<u64>(&channel).await.unwrap();
    drop(a);
    assert_eq!(
        publisher.publish(&channel, &1u64).await.unwrap(),
        1,
        "b still subscribed"
    );
    drop(b);
    let start = std::time::Instant::now();
    while publisher.publish(&channel, &2u64).await.unwrap() != 0 {
        assert!(
            start.elapsed() < DEADLINE,
            "still subscribed after the last receiver was dropped"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // And subscribing again works.
    let mut c = subscriber.subscribe::<u64>(&channel).await.unwrap();
    publisher.publish(&channel, &3u64).await.unwrap();
    assert_eq!(next_message(&mut c).await.payload.unwrap(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn core_traits_work_through_trait_objects() {
    use fredkit_core::traits::{self, PublisherExt, SubscriberExt};
    use std::sync::Arc;
    let redis = connect(&shared_url(Topology::Standalone).unwrap()).await;
    let publisher: Arc<dyn traits::Publisher> = Arc::new(Publisher::new(&redis));
    let subscriber: Arc<dyn traits::Subscriber> = Arc::new(Subscriber::new(&redis).await.unwrap());
    let channel = format!("{}dyn", unique_prefix("pubsub_dyn"));
    let mut stream = subscriber
        .subscribe::<Order, _>(fredkit_core::MsgPack, &channel)
        .await
        .unwrap();
    let order = Order {
        id: 1,
        item: "dyn".into(),
    };
    assert_eq!(
        publisher
            .publish(&fredkit_core::MsgPack, &channel, &order)
            .await
            .unwrap(),
        1
    );
    let got = tokio::time::timeout(DEADLINE, stream.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(got.payload, order);
    assert_eq!(got.channel, channel);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sentinel_failover_moves_the_subscriber_to_the_new_primary_and_reports_the_gap() {
    let group = fredkit_testkit::SentinelGroup::start().unwrap();
    let redis = connect(&group.url()).await;
    let subscriber = Subscriber::new(&redis).await.unwrap();
    let publisher = Publisher::new(&redis);
    assert!(!subscriber.is_sharded());
    let mut sub = subscriber.subscribe::<u64>("events").await.unwrap();
    publisher.publish("events", &1u64).await.unwrap();
    assert_eq!(next_message(&mut sub).await.payload.unwrap(), 1);

    let before = *subscriber.gaps().borrow();
    let old = group.master_addr().unwrap();
    let new = group.failover().unwrap();
    assert_ne!(old, new);
    // Sentinel kills the clients of the old primary once it demotes it; the
    // subscriber reconnects through the sentinels to the new one.
    gap_reported_then_messages_flow(&mut sub, &subscriber, &publisher, "events", before).await;
    let on_new = group
        .server_by_addr(&new)
        .unwrap()
        .command(&["PUBSUB", "NUMSUB", "events"])
        .unwrap();
    let count = on_new
        .as_array()
        .and_then(|a| a.get(1))
        .and_then(|r| r.as_int());
    assert_eq!(count, Some(1), "subscribed on the new primary");
}

/// A server that goes silent without closing the subscriber's connection
/// (SIGSTOP here; a dead host or a half-open TCP connection in production)
/// for longer than the probe's unresponsive timeout (3 s with the default 1 s
/// command timeout): the liveness probe forces a reconnection, so once the
/// server answers again the subscriber resubscribes and reports the gap.
/// Without the probe the old connection simply carries on after the resume
/// and no gap is ever announced, though messages published during the pause
/// were lost to it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paused_server_makes_the_subscriber_reconnect_and_report_the_gap() {
    let server = RedisServer::start().unwrap();
    let redis = connect(&server.url()).await;
    let subscriber = Subscriber::new(&redis).await.unwrap();
    let publisher = Publisher::new(&redis);
    let mut sub = subscriber.subscribe::<u64>("ch").await.unwrap();
    publisher.publish("ch", &1u64).await.unwrap();
    assert_eq!(next_message(&mut sub).await.payload.unwrap(), 1);

    let before = *subscriber.gaps().borrow();
    server.pause().unwrap();
    // Longer than the unresponsive timeout plus a probe interval.
    tokio::time::sleep(Duration::from_secs(5)).await;
    server.resume().unwrap();

    gap_reported_then_messages_flow(&mut sub, &subscriber, &publisher, "ch", before).await;
    assert!(
        subscriber.metrics().silent_reconnects >= 1,
        "{:?}",
        subscriber.metrics()
    );
}

/// Publishes increasing numbers (from `from`) on `channel` until `sub`
/// receives one of them, retrying failed publishes, within `deadline`.
/// Returns whether a gap was delivered before that message.
async fn publish_until_received(
    sub: &mut Subscription<u64>,
    publisher: &Publisher,
    channel: &str,
    from: u64,
    deadline: Duration,
) -> bool {
    let start = std::time::Instant::now();
    let mut next = from;
    let mut saw_gap = false;
    loop {
        assert!(
            start.elapsed() < deadline,
            "no message published after the failover reached the subscriber within {deadline:?} \
             (gap seen: {saw_gap})"
        );
        if tokio::time::timeout(Duration::from_secs(2), publisher.publish(channel, &next))
            .await
            .is_ok_and(|r| r.is_ok())
        {
            next += 1;
        }
        let until = tokio::time::Instant::now() + Duration::from_millis(200);
        while let Ok(item) = tokio::time::timeout_at(until, sub.next()).await {
            match item {
                Some(Delivery::Gap) => saw_gap = true,
                Some(Delivery::Message(m)) if m.payload.as_ref().is_ok_and(|v| *v >= from) => {
                    return saw_gap
                }
                Some(_) => {}
                None => panic!("stream ended"),
            }
        }
    }
}

/// Sentinel: the master goes silent (paused, and left paused) and the
/// sentinels promote the replica. Nobody closes the subscriber's connection
/// to the old master: fredkit-conn's `+switch-master` follower (or, if the
/// announcement were missed, the liveness probe) gets it off that
/// connection; fred then asks the sentinels again and the subscriber
/// resubscribes on the new master and reports the gap. Without both it waits
/// on the paused master for ever. (The probe alone is proven by the
/// standalone and cluster paused tests.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failover_away_from_a_paused_sentinel_master_moves_the_subscriber() {
    let group = fredkit_testkit::SentinelGroup::start().unwrap();
    let redis = connect(&group.url()).await;
    let subscriber = Subscriber::new(&redis).await.unwrap();
    let publisher = Publisher::new(&redis);
    let mut sub = subscriber.subscribe::<u64>("events").await.unwrap();
    publisher.publish("events", &1u64).await.unwrap();
    assert_eq!(next_message(&mut sub).await.payload.unwrap(), 1);

    let before = *subscriber.gaps().borrow();
    let old = group.master_addr().unwrap();
    let paused = group.server_by_addr(&old).unwrap();
    paused.pause().unwrap();

    // Wait for the sentinels to promote the replica; messages published
    // from then on must reach the subscriber.
    let start = std::time::Instant::now();
    while group.master_addr().map_or(true, |a| a == old) {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "no failover happened"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let saw_gap = publish_until_received(
        &mut sub,
        &publisher,
        "events",
        1_000,
        Duration::from_secs(45),
    )
    .await;
    assert!(saw_gap, "messages resumed without a gap notification");
    assert!(*subscriber.gaps().borrow() > before);
    paused.resume().unwrap();
}

/// Cluster with one replica per master: the node the subscriber's
/// subscriptions live on (plain: the node fred picked for the subscriber's
/// connection; sharded: the owner of the channel's slot) goes silent and
/// stays paused; the cluster fails it over to its replica. The probe's
/// forced reconnection makes fred re-read the topology (on a cluster that is
/// all it does: a node that still owns slots keeps its connection, so the
/// probe forces again every ~3.5 s until the failover shows in `CLUSTER
/// SLOTS`); once the replica owns the slots, fred drops the silent node,
/// connects to the replica and the subscriber resubscribes there. Without the
/// probe nothing ever makes fred re-read the topology for the subscriber.
#[rstest]
#[case::plain(Mode::Plain)]
#[case::sharded(Mode::Sharded)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failover_away_from_a_paused_cluster_node_moves_the_subscriber(#[case] mode: Mode) {
    let cluster = RedisCluster::start(ClusterOptions::default().replicas_per_master(1)).unwrap();
    let redis = connect(&cluster.url()).await;
    let options = PubSubOptions::default().mode(mode);
    let subscriber = Subscriber::with_codec(&redis, fredkit_core::MsgPack, options.clone())
        .await
        .unwrap();
    let publisher = Publisher::with_codec(&redis, fredkit_core::MsgPack, options);
    let channel = "events";
    let mut sub = subscriber.subscribe::<u64>(channel).await.unwrap();
    publisher.publish(channel, &1u64).await.unwrap();
    assert_eq!(next_message(&mut sub).await.payload.unwrap(), 1);

    // The master holding the subscription.
    let numsub = if mode == Mode::Sharded {
        "SHARDNUMSUB"
    } else {
        "NUMSUB"
    };
    let victim = (0..cluster.masters().len())
        .find(|&i| {
            let reply = cluster.masters()[i]
                .command(&["PUBSUB", numsub, channel])
                .unwrap();
            reply
                .as_array()
                .and_then(|a| a.get(1))
                .and_then(|r| r.as_int())
                == Some(1)
        })
        .expect("no master holds the subscription");
    let before = *subscriber.gaps().borrow();
    cluster.masters()[victim].pause().unwrap();

    let replica = &cluster.replicas_of(victim)[0];
    let start = std::time::Instant::now();
    loop {
        let role = replica.command(&["ROLE"]).ok();
        if role
            .as_ref()
            .and_then(|r| r.as_array())
            .and_then(|a| a.first())
            .and_then(|r| r.as_str())
            == Some("master")
        {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "the replica was not promoted"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let saw_gap = publish_until_received(
        &mut sub,
        &publisher,
        channel,
        1_000,
        Duration::from_secs(45),
    )
    .await;
    assert!(saw_gap, "messages resumed without a gap notification");
    assert!(*subscriber.gaps().borrow() > before);
    assert!(
        subscriber.metrics().silent_reconnects >= 1,
        "{:?}",
        subscriber.metrics()
    );
    cluster.masters()[victim].resume().unwrap();
}

/// The liveness probe's `PING` on a subscribed connection is answered (fred
/// resolves it in subscribed mode): a healthy subscriber, idle for longer
/// than the unresponsive timeout, is probed repeatedly and never reconnected.
#[rstest]
#[case::standalone(Topology::Standalone)]
#[case::cluster_sharded(Topology::Cluster)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_liveness_probe_is_answered_on_a_healthy_subscriber(#[case] topology: Topology) {
    let private = (topology == Topology::Standalone).then(|| RedisServer::start().unwrap());
    let url = private
        .as_ref()
        .map_or_else(|| shared_url(topology).unwrap(), RedisServer::url);
    let redis = connect(&url).await;
    let subscriber = Subscriber::new(&redis).await.unwrap();
    let channel = format!("{}probe", unique_prefix("pubsub_probe"));
    let mut sub = subscriber.subscribe::<u64>(&channel).await.unwrap();
    // Longer than the unresponsive timeout (3 s) plus a probe interval.
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(subscriber.metrics().silent_reconnects, 0);
    assert_eq!(*subscriber.gaps().borrow(), 0);
    if let Some(server) = &private {
        // The subscriber is this server's only pub/sub client; probed every
        // 500 ms, it is never idle for long (without the probe it
        // would be idle since the subscribe, 4 s ago). Checked before the
        // publish below: a delivered message resets `idle` too.
        let list = server
            .command(&["CLIENT", "LIST", "TYPE", "pubsub"])
            .unwrap();
        let text = String::from_utf8_lossy(list.as_bytes().unwrap()).into_owned();
        let idle: Vec<u64> = text
            .split_whitespace()
            .filter_map(|f| f.strip_prefix("idle="))
            .filter_map(|n| n.parse().ok())
            .collect();
        // `idle` is in whole seconds: 1 when a second boundary fell since
        // the last probe.
        assert!(idle.len() == 1 && idle[0] <= 1, "{text}");
    }
    Publisher::new(&redis)
        .publish(&channel, &7u64)
        .await
        .unwrap();
    assert_eq!(next_message(&mut sub).await.payload.unwrap(), 7);
}

/// Start-up never needs Redis: a `Subscriber` made while Redis is down
/// returns at once — before the server is even started, and well inside
/// the (here 30 s) connect timeout it used to wait for — and once the
/// server is up it subscribes and delivers every message published after
/// the subscription, in order; the first connection is not announced as a
/// gap.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_subscriber_made_while_redis_is_down_returns_at_once_and_delivers_after_restart() {
    let mut server = RedisServer::start().unwrap();
    let url = server.url();
    server.kill().unwrap();
    let config = fredkit_conn::RedisConfig::builder()
        .url(url)
        .connect_timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    let redis = Redis::connect(config).await.unwrap();
    let started = std::time::Instant::now();
    let subscriber = tokio::time::timeout(Duration::from_secs(60), Subscriber::new(&redis))
        .await
        .expect("Subscriber::new hung while Redis was down")
        .unwrap();
    let took = started.elapsed();
    // Ordering: it returned while nothing listened on the port.
    assert!(!server.is_running());
    // Generous for a loaded box, far below the 30 s connect timeout.
    assert!(
        took < Duration::from_secs(10),
        "Subscriber::new waited {took:?} for a Redis that is down"
    );

    tokio::task::block_in_place(|| server.restart()).unwrap();
    let channel = format!("{}late", unique_prefix("pubsub_late"));
    let deadline = tokio::time::Instant::now() + DEADLINE;
    let mut sub = loop {
        match subscriber.subscribe::<u64>(&channel).await {
            Ok(s) => break s,
            Err(e) if tokio::time::Instant::now() < deadline => {
                tracing::debug!(error = %e, "subscribe while connecting; retrying");
            }
            Err(e) => panic!("no subscription after the server started: {e}"),
        }
    };
    tokio::time::timeout(DEADLINE, redis.wait_connected())
        .await
        .expect("the shared connection did not come up")
        .unwrap();
    let publisher = Publisher::new(&redis);
    for i in 0..200u64 {
        publisher.publish(&channel, &i).await.unwrap();
    }
    for i in 0..200u64 {
        assert_eq!(next_message(&mut sub).await.payload.unwrap(), i);
    }
    assert_eq!(
        *subscriber.gaps().borrow(),
        0,
        "the first connection is not a gap"
    );
    assert_eq!(subscriber.metrics().resubscribes, 0);
}

/// A receiver that does not read while more messages arrive than its buffer
/// holds gets exactly one `Lagged(k)` with k the number of messages it
/// missed, then the newest ones in order; another receiver of the same
/// channel that reads as they arrive gets every message. Deterministic: each
/// message is published only after the fast receiver got the previous one,
/// so every message is in the channel buffer before the slow one reads.
/// `receiver_capacity` is rounded up to a power of two (the buffer keeps at
/// least that many): 4 keeps 4, 5 keeps 8.
#[rstest]
#[case::standalone_4(Topology::Standalone, 4, 4)]
#[case::standalone_5(Topology::Standalone, 5, 8)]
#[case::cluster_4(Topology::Cluster, 4, 4)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_receiver_gets_lagged_with_the_exact_count_then_the_newest_messages_in_order(
    #[case] topology: Topology,
    #[case] capacity: usize,
    #[case] kept: u64,
) {
    const SENT: u64 = 40;
    let redis = connect(&shared_url(topology).unwrap()).await;
    let subscriber = Subscriber::with_codec(
        &redis,
        fredkit_core::MsgPack,
        PubSubOptions::default().receiver_capacity(capacity),
    )
    .await
    .unwrap();
    let publisher = Publisher::new(&redis);
    let channel = format!("{}lag", unique_prefix("pubsub_lagged"));
    let mut slow = subscriber.subscribe::<u64>(&channel).await.unwrap();
    let mut fast = subscriber.subscribe::<u64>(&channel).await.unwrap();
    for i in 0..SENT {
        publisher.publish(&channel, &i).await.unwrap();
        // The fast receiver reads every message as it arrives: never lags.
        assert_eq!(next_message(&mut fast).await.payload.unwrap(), i);
    }
    assert_eq!(subscriber.metrics().lagged, 0, "the fast receiver lagged");
    // Every message has been through the channel buffer: the slow receiver
    // missed all but the newest `kept`.
    match tokio::time::timeout(DEADLINE, slow.next()).await.unwrap() {
        Some(Delivery::Lagged(n)) => assert_eq!(n, SENT - kept, "lag count"),
        other => panic!("expected Lagged({}), got {other:?}", SENT - kept),
    }
    for i in SENT - kept..SENT {
        assert_eq!(next_message(&mut slow).await.payload.unwrap(), i);
    }
    assert_eq!(subscriber.metrics().lagged, SENT - kept);
    // Caught up: the next message reaches both, nothing else is pending.
    publisher.publish(&channel, &SENT).await.unwrap();
    assert_eq!(next_message(&mut fast).await.payload.unwrap(), SENT);
    assert_eq!(next_message(&mut slow).await.payload.unwrap(), SENT);
}
