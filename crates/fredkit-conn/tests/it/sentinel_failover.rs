//! Sentinel failovers under steady writes: what an acknowledged write is
//! worth across a planned failover (`SENTINEL FAILOVER`), a killed primary
//! and a paused one.
//!
//! Each test writes for ~10 s from several tasks, two ways, and fails the
//! primary over in the middle:
//! - plain writes (`SADD plain id` on the shared pool): acknowledged by the
//!   primary alone. Async replication can lose some; the bound asserted is
//!   that every lost one was acknowledged inside the failover window — after
//!   the fault began and at most [`FOLLOW_WITHIN`] after the first
//!   `+switch-master` (the client moved within that time) — and that every
//!   write acknowledged outside it is on the new primary.
//! - confirmed writes ([`Redis::confirmed`], `WAIT 1`): **none** lost.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use fred::clients::SubscriberClient;
use fred::prelude::*;
use fredkit_conn::{Redis, RedisConfig};
use fredkit_testkit::SentinelGroup;
use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The client is on the new primary at most this long after the first
/// `+switch-master` (the bound).
const FOLLOW_WITHIN: Duration = Duration::from_secs(1);
/// Writes acknowledged this long before the fault began may still be in
/// flight to the replica when a killed primary dies (replies and the
/// replication stream leave in the same event-loop turn, microseconds apart).
const BEFORE_FAULT: Duration = Duration::from_millis(100);
const PLAIN_WRITERS: u64 = 6;
const CONFIRMED_WRITERS: u64 = 3;

#[derive(Clone, Copy, Debug)]
enum Fault {
    Planned,
    Kill,
    Pause,
}

/// Records when any sentinel first announces a new primary.
async fn watch_switches(
    group: &SentinelGroup,
) -> (Arc<Mutex<Option<Instant>>>, Vec<SubscriberClient>) {
    let first = Arc::new(Mutex::new(None));
    let mut clients = Vec::new();
    for s in group.sentinels() {
        let client = Builder::from_config(Config {
            server: ServerConfig::new_centralized("127.0.0.1", s.port()),
            ..Config::default()
        })
        .build_subscriber_client()
        .unwrap();
        client.init().await.unwrap();
        let mut rx = client.message_rx();
        client.subscribe("+switch-master").await.unwrap();
        let first = first.clone();
        tokio::spawn(async move {
            while let Ok(m) = rx.recv().await {
                if &*m.channel == "+switch-master" {
                    first.lock().unwrap().get_or_insert_with(Instant::now);
                }
            }
        });
        clients.push(client);
    }
    (first, clients)
}

fn members(group: &SentinelGroup, key: &str) -> HashSet<u64> {
    let master = group.current_master().unwrap();
    let reply = master.command(&["SMEMBERS", key]).unwrap();
    reply
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            std::str::from_utf8(r.as_bytes().unwrap())
                .unwrap()
                .parse()
                .unwrap()
        })
        .collect()
}

async fn run(fault: Fault) {
    let mut group = SentinelGroup::start().unwrap();
    let (switched_at, _watchers) = watch_switches(&group).await;
    let redis = Redis::connect(RedisConfig::from_url(&group.url()).unwrap())
        .await
        .unwrap();
    redis.wait_connected().await.unwrap();
    let durable = redis.confirmed(1, Duration::from_millis(500)).unwrap();
    let old = group.master_addr().unwrap();
    // Connections of their own follow the switch too.
    let dedicated = redis.dedicated().unwrap();
    dedicated
        .wait_connected(Duration::from_secs(5))
        .await
        .unwrap();
    let subscriber = redis.subscriber().unwrap();
    subscriber
        .wait_connected(Duration::from_secs(5))
        .await
        .unwrap();

    let stop = Arc::new(AtomicBool::new(false));
    let ids = Arc::new(AtomicU64::new(0));
    // (id, acknowledged at)
    let plain_acks = Arc::new(Mutex::new(Vec::<(u64, Instant)>::new()));
    let confirmed_acks = Arc::new(Mutex::new(Vec::<u64>::new()));
    // (sent at, error)
    let plain_failures = Arc::new(Mutex::new(Vec::<(Instant, String)>::new()));
    let mut tasks = Vec::new();
    for _ in 0..PLAIN_WRITERS {
        let (redis, stop, ids, acks) =
            (redis.clone(), stop.clone(), ids.clone(), plain_acks.clone());
        let failures = plain_failures.clone();
        tasks.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let id = ids.fetch_add(1, Ordering::Relaxed);
                let sent = Instant::now();
                match redis.client().sadd::<i64, _, _>("plain", id).await {
                    Ok(_) => acks.lock().unwrap().push((id, Instant::now())),
                    Err(e) => failures.lock().unwrap().push((sent, e.to_string())),
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }));
    }
    for _ in 0..CONFIRMED_WRITERS {
        let (durable, stop, ids, acks) = (
            durable.clone(),
            stop.clone(),
            ids.clone(),
            confirmed_acks.clone(),
        );
        tasks.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let id = ids.fetch_add(1, Ordering::Relaxed);
                let written = durable
                    .write("confirmed", |c| async move {
                        c.sadd::<i64, _, _>("confirmed", id).await?;
                        c.incr::<i64, _>("confirmed:n").await
                    })
                    .await;
                if written.is_ok() {
                    acks.lock().unwrap().push(id);
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }));
    }

    let started = Instant::now();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let fault_at = Instant::now();
    let mut paused = None;
    match fault {
        Fault::Planned => {
            let g = &group;
            // SENTINEL FAILOVER, then wait until every sentinel names the new primary.
            tokio::task::block_in_place(|| g.failover().unwrap());
        }
        Fault::Kill => {
            let victim = group
                .servers_mut()
                .iter_mut()
                .find(|s| s.addr() == old)
                .unwrap();
            victim.kill().unwrap();
        }
        Fault::Pause => {
            let victim = group.server_by_addr(&old).unwrap();
            victim.pause().unwrap();
            paused = Some(old.clone());
        }
    }
    // Write until 10 s have passed and for 3 s after the switch.
    let switch = loop {
        if let Some(at) = *switched_at.lock().unwrap() {
            if started.elapsed() >= Duration::from_secs(10)
                && at.elapsed() >= Duration::from_secs(3)
            {
                break at;
            }
        }
        assert!(
            fault_at.elapsed() < Duration::from_secs(40),
            "no +switch-master within 40 s of the {fault:?} fault"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await.unwrap();
    }
    let new = group.master_addr().unwrap();
    assert_ne!(new, old, "no failover happened");
    let on = |servers: Vec<Server>| {
        servers
            .iter()
            .map(|s| format!("{}:{}", s.host, s.port))
            .collect::<Vec<_>>()
    };
    assert_eq!(
        on(dedicated.active_connections()),
        vec![new.clone()],
        "{fault:?}: the dedicated connection did not follow"
    );
    assert_eq!(
        on(subscriber.active_connections()),
        vec![new.clone()],
        "{fault:?}: the subscriber connection did not follow"
    );
    assert_eq!(
        on(redis.client().active_connections()),
        vec![new.clone()],
        "{fault:?}: the pool did not follow"
    );

    let on_new_plain = members(&group, "plain");
    let on_new_confirmed = members(&group, "confirmed");
    let confirmed_n: i64 = group
        .current_master()
        .unwrap()
        .command(&["GET", "confirmed:n"])
        .unwrap()
        .as_bytes()
        .map(|b| std::str::from_utf8(b).unwrap().parse().unwrap())
        .unwrap();
    if let Some(addr) = paused {
        group.server_by_addr(&addr).unwrap().resume().unwrap();
    }

    let plain_acks = plain_acks.lock().unwrap().clone();
    let confirmed_acks = confirmed_acks.lock().unwrap().clone();
    let window = (fault_at - BEFORE_FAULT)..=(switch + FOLLOW_WITHIN);
    let lost: Vec<&(u64, Instant)> = plain_acks
        .iter()
        .filter(|(id, _)| !on_new_plain.contains(id))
        .collect();
    let outside: Vec<String> = lost
        .iter()
        .filter(|(_, at)| !window.contains(at))
        .map(|(id, at)| {
            format!(
                "id {id} acknowledged {:?} after +switch-master",
                at.saturating_duration_since(switch)
            )
        })
        .collect();
    let after_follow = plain_acks
        .iter()
        .filter(|(_, at)| *at > switch + FOLLOW_WITHIN)
        .count();
    let confirmed_lost: Vec<u64> = confirmed_acks
        .iter()
        .copied()
        .filter(|id| !on_new_confirmed.contains(id))
        .collect();
    let span = |f: fn(&Instant, &Instant) -> bool| {
        lost.iter()
            .map(|(_, at)| *at)
            .reduce(|a, b| if f(&a, &b) { a } else { b })
            .map(|at| at.saturating_duration_since(fault_at))
    };
    eprintln!(
        "{fault:?}: lost plain writes acknowledged from {:?} to {:?} after the fault",
        span(|a, b| a < b),
        span(|a, b| a > b)
    );
    eprintln!(
        "{fault:?}: +switch-master {:?} after the fault; plain: {} acknowledged, {} lost in the window, {} acknowledged after the follow bound; confirmed: {} acknowledged, {} lost; counter {confirmed_n}",
        switch.saturating_duration_since(fault_at),
        plain_acks.len(),
        lost.len(),
        after_follow,
        confirmed_acks.len(),
        confirmed_lost.len(),
    );
    assert!(
        outside.is_empty(),
        "{fault:?}: acknowledged plain writes lost outside the failover window (the client was not on the new primary within {FOLLOW_WITHIN:?} of +switch-master): {outside:?}"
    );
    assert!(
        after_follow > 0,
        "{fault:?}: no plain write succeeded after the switch"
    );
    let failed_after: Vec<String> = plain_failures
        .lock()
        .unwrap()
        .iter()
        .filter(|(sent, _)| *sent > switch + FOLLOW_WITHIN)
        .map(|(sent, e)| {
            format!(
                "sent {:?} after +switch-master: {e}",
                sent.saturating_duration_since(switch)
            )
        })
        .collect();
    assert!(
        failed_after.is_empty(),
        "{fault:?}: writes sent more than {FOLLOW_WITHIN:?} after +switch-master failed (the client was not on the new primary): {failed_after:?}"
    );
    assert!(
        confirmed_lost.is_empty(),
        "{fault:?}: replica-confirmed writes lost: {confirmed_lost:?}"
    );
    assert!(
        confirmed_n >= confirmed_acks.len() as i64,
        "{fault:?}: confirmed INCRs lost: counter {confirmed_n} < {} acknowledged",
        confirmed_acks.len()
    );
    assert!(!confirmed_acks.is_empty());
    redis.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_planned_sentinel_failover_loses_no_confirmed_write_and_follows_the_switch() {
    run(Fault::Planned).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_killed_sentinel_master_loses_no_confirmed_write_and_follows_the_switch() {
    run(Fault::Kill).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_paused_sentinel_master_loses_no_confirmed_write_and_follows_the_switch() {
    run(Fault::Pause).await;
}
