//! `collections`: each fredkit-collections operation against the raw fred
//! commands it stands on, interleaved in the same run, 64 tasks, on the very
//! fred client the fredkit-conn handle holds (so a ratio is the library's
//! own cost: its script, its checks, its decoding):
//!
//! | fredkit | raw fred (one round trip unless said) |
//! |---|---|
//! | `TtlMap::add` | `HINCRBY` + `PEXPIRE` pipelined |
//! | `TtlMap::quantity` | `HGET` |
//! | `Feed::push` (cap 100) | `LPUSH` + `LTRIM` + `PEXPIRE` pipelined |
//! | `Feed::latest(10)` | `LRANGE 0 9` |
//! | `Presence::heartbeat` | `ZREMRANGEBYSCORE` + `ZADD` + `PEXPIRE` + `ZCARD` pipelined (client clock) |
//! | `Leaderboard::submit` (best) | `ZADD GT` + `ZSCORE` pipelined |
//! | `Leaderboard::top(10)` | `ZRANGE 0 9 WITHSCORES` |
//! | `Leaderboard::rank` | `ZSCORE`, then `ZCOUNT` (two round trips: a competition rank needs the score first) |
//! | `BloomFilter::contains_many` (100 items) | 700 `GETBIT`s pipelined |
//!
//! Ratios `<op>_vs_raw` are medians of per-round ratios (goal >= 0.90).

use super::Suite;
use crate::harness::{interleave, median, op, Contender, Report, Summary};
use crate::Ctx;
use anyhow::{bail, Result};
use fred::prelude::*;
use fred::types::sorted_sets::Ordering as ZOrdering;
use fred::types::{ClusterHash, CustomCommand, Value};
use fredkit_collections::{BloomFilter, Feed, Leaderboard, Presence, Submit, TtlMap};
use futures::future::BoxFuture;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The `collections` suite.
pub(crate) struct Collections;

impl Suite for Collections {
    fn name(&self) -> &'static str {
        "collections"
    }

    fn about(&self) -> &'static str {
        "TtlMap add/quantity, Feed push/latest, Presence heartbeat, Leaderboard submit/top/rank, BloomFilter contains_many vs the raw fred commands, c64"
    }

    fn run<'a>(&'a self, ctx: &'a Ctx, report: &'a mut Report) -> BoxFuture<'a, Result<()>> {
        Box::pin(run(ctx, report))
    }
}

const PREFIX: &str = "bench:coll";
const CONCURRENCY: usize = 64;
/// Distinct maps, feeds, members the operations cycle through.
const IDS: u64 = 1024;
/// Members of the board that top/rank read.
const MEMBERS: u64 = 10_000;
const BLOOM_BATCH: usize = 100;
const TTL: Duration = Duration::from_secs(600);

/// The median over rounds of `a`'s ops/s divided by `b`'s in the same round
/// (they ran back to back).
fn paired_ratio(a: &Summary, b: &Summary) -> f64 {
    let ratios: Vec<f64> = a
        .rounds
        .iter()
        .zip(&b.rounds)
        .map(|(x, y)| x.ops_per_sec() / y.ops_per_sec())
        .filter(|r| r.is_finite())
        .collect();
    if ratios.is_empty() {
        a.ratio_to(b)
    } else {
        median(&ratios)
    }
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

async fn run(ctx: &Ctx, report: &mut Report) -> Result<()> {
    let redis = ctx.redis().await?;
    let raw = redis.client().clone();
    let ttl_ms = TTL.as_millis() as i64;

    let carts: TtlMap<String> = TtlMap::new(&redis, format!("{PREFIX}:cart"), TTL)?;
    let feed: Feed<String> = Feed::new(&redis, format!("{PREFIX}:feed"), 100, TTL)?;
    let presence = Presence::new(&redis, format!("{PREFIX}:online"), Duration::from_secs(60))?;
    let board = Leaderboard::builder(&redis, format!("{PREFIX}:lb")).build()?;
    let bloom = BloomFilter::builder(&redis, format!("{PREFIX}:bloom"), 100_000).build()?;

    // Fill: a board of 10,000 members, a Bloom filter of 100,000 ids, a
    // cart per id.
    let members: Vec<String> = (0..MEMBERS).map(|i| format!("m{i}")).collect();
    futures::future::try_join_all(
        members
            .iter()
            .enumerate()
            .map(|(i, m)| board.submit("read", m, (i % 977) as f64, Submit::Latest)),
    )
    .await?;
    let ids: Vec<String> = (0..100_000).map(|i| format!("sku-{i}")).collect();
    bloom.insert_many("all", &ids).await?;
    for i in 0..IDS {
        carts.add(&format!("c{i}"), "sku-1", 1).await?;
    }
    let board_key = board.key("read")?;
    let bloom_key = bloom.key("all")?;
    // The raw Bloom side reads the same bits: 7 positions per item, as the
    // library derives them (any 7 positions cost the same).
    let bits = bloom.bits();
    let hashes = u64::from(bloom.hashes());
    let probes: Arc<Vec<Vec<String>>> = Arc::new(
        (0..16)
            .map(|b| {
                (0..BLOOM_BATCH)
                    .map(|i| format!("sku-{}", (b * 7919 + i * 13) % 200_000))
                    .collect()
            })
            .collect(),
    );

    let mut contenders: Vec<Contender> = Vec::new();
    let mut pair = |name: &str, fk: crate::harness::Op, rw: crate::harness::Op| {
        contenders.push(Contender::new(name.to_string(), CONCURRENCY, fk));
        contenders.push(Contender::new(format!("raw_{name}"), CONCURRENCY, rw));
    };

    {
        let carts = carts.clone();
        let c = raw.clone();
        let key_of = carts.clone();
        pair(
            "ttlmap_add",
            op(move |i| {
                let carts = carts.clone();
                async move {
                    carts.add(&format!("c{}", i % IDS), "sku-1", 1).await?;
                    Ok(())
                }
            }),
            op(move |i| {
                let c = c.clone();
                let key = key_of.key(&format!("r{}", i % IDS));
                async move {
                    let key = key?;
                    let p = c.pipeline();
                    let () = p.hincrby(&key, "n:sku-1", 1).await?;
                    let () = p.pexpire(&key, ttl_ms, None).await?;
                    let _: (i64, bool) = p.all().await?;
                    Ok(())
                }
            }),
        );
    }
    {
        let carts = carts.clone();
        let c = raw.clone();
        let key_of = carts.clone();
        pair(
            "ttlmap_quantity",
            op(move |i| {
                let carts = carts.clone();
                async move {
                    carts.quantity(&format!("c{}", i % IDS), "sku-1").await?;
                    Ok(())
                }
            }),
            op(move |i| {
                let c = c.clone();
                let key = key_of.key(&format!("c{}", i % IDS));
                async move {
                    let _: Option<i64> = c.hget(key?, "n:sku-1").await?;
                    Ok(())
                }
            }),
        );
    }
    {
        let f = feed.clone();
        let c = raw.clone();
        let key_of = feed.clone();
        pair(
            "feed_push",
            op(move |i| {
                let f = f.clone();
                async move {
                    f.push(&format!("f{}", i % IDS), &format!("event {i}"))
                        .await?;
                    Ok(())
                }
            }),
            op(move |i| {
                let c = c.clone();
                let key = key_of.key(&format!("r{}", i % IDS));
                async move {
                    let key = key?;
                    // The same bytes the codec would write (MessagePack str).
                    let item = rmp_serde::to_vec_named(&format!("event {i}"))?;
                    let p = c.pipeline();
                    let () = p.lpush(&key, item).await?;
                    let () = p.ltrim(&key, 0, 99).await?;
                    let () = p.pexpire(&key, ttl_ms, None).await?;
                    let _: (i64, (), bool) = p.all().await?;
                    Ok(())
                }
            }),
        );
    }
    {
        let f = feed.clone();
        let c = raw.clone();
        let key_of = feed.clone();
        pair(
            "feed_latest",
            op(move |i| {
                let f = f.clone();
                async move {
                    f.latest(&format!("f{}", i % IDS), 10).await?;
                    Ok(())
                }
            }),
            op(move |i| {
                let c = c.clone();
                let key = key_of.key(&format!("f{}", i % IDS));
                async move {
                    let items: Vec<Vec<u8>> = c.lrange(key?, 0, 9).await?;
                    for item in items {
                        let _: String = rmp_serde::from_slice(&item)?;
                    }
                    Ok(())
                }
            }),
        );
    }
    {
        let p = presence.clone();
        let c = raw.clone();
        let key_of = presence.clone();
        pair(
            "presence_heartbeat",
            op(move |i| {
                let p = p.clone();
                async move {
                    p.heartbeat(&format!("room{}", i % 16), &format!("u{}", i % IDS))
                        .await?;
                    Ok(())
                }
            }),
            op(move |i| {
                let c = c.clone();
                let key = key_of.key(&format!("rroom{}", i % 16));
                async move {
                    let key = key?;
                    let now = now_ms();
                    let p = c.pipeline();
                    let () = p
                        .zremrangebyscore(&key, f64::NEG_INFINITY, (now - 60_000) as f64)
                        .await?;
                    let () = p
                        .zadd(
                            &key,
                            None,
                            None,
                            false,
                            false,
                            (now as f64, format!("u{}", i % IDS)),
                        )
                        .await?;
                    let () = p.pexpire(&key, 60_000, None).await?;
                    let () = p.zcard(&key).await?;
                    let _: (i64, i64, bool, i64) = p.all().await?;
                    Ok(())
                }
            }),
        );
    }
    {
        let b = board.clone();
        let c = raw.clone();
        let key_of = board.clone();
        pair(
            "leaderboard_submit",
            op(move |i| {
                let b = b.clone();
                async move {
                    b.submit(
                        "write",
                        &format!("m{}", i % MEMBERS),
                        (i % 1000) as f64,
                        Submit::Best,
                    )
                    .await?;
                    Ok(())
                }
            }),
            op(move |i| {
                let c = c.clone();
                let key = key_of.key("rawwrite");
                async move {
                    let key = key?;
                    let member = format!("m{}", i % MEMBERS);
                    let p = c.pipeline();
                    let () = p
                        .zadd(
                            &key,
                            None,
                            Some(ZOrdering::GreaterThan),
                            false,
                            false,
                            ((i % 1000) as f64, member.as_str()),
                        )
                        .await?;
                    let () = p.zscore(&key, member.as_str()).await?;
                    let _: (i64, f64) = p.all().await?;
                    Ok(())
                }
            }),
        );
    }
    {
        let b = board.clone();
        let c = raw.clone();
        let key = board_key.clone();
        pair(
            "leaderboard_top",
            op(move |_| {
                let b = b.clone();
                async move {
                    let top = b.top("read", 10).await?;
                    if top.len() != 10 {
                        bail!("top gave {} members", top.len());
                    }
                    Ok(())
                }
            }),
            op(move |_| {
                let c = c.clone();
                let key = key.clone();
                async move {
                    let v: Vec<(String, f64)> =
                        c.zrange(key, 0, 9, None, false, None, true).await?;
                    if v.len() != 10 {
                        bail!("ZRANGE gave {} members", v.len());
                    }
                    Ok(())
                }
            }),
        );
    }
    {
        let b = board.clone();
        let c = raw.clone();
        let key = board_key.clone();
        pair(
            "leaderboard_rank",
            op(move |i| {
                let b = b.clone();
                async move {
                    if b.rank("read", &format!("m{}", i % MEMBERS))
                        .await?
                        .is_none()
                    {
                        bail!("rank found no member");
                    }
                    Ok(())
                }
            }),
            op(move |i| {
                let c = c.clone();
                let key = key.clone();
                async move {
                    let score: f64 = c.zscore(&key, format!("m{}", i % MEMBERS)).await?;
                    let _: i64 = c
                        .custom(
                            CustomCommand::new_static("ZCOUNT", ClusterHash::FirstKey, false),
                            vec![
                                Value::from(key.as_str()),
                                Value::from("-inf"),
                                Value::from(format!("({score}")),
                            ],
                        )
                        .await?;
                    Ok(())
                }
            }),
        );
    }
    {
        let bf = bloom.clone();
        let c = raw.clone();
        let probes_fk = Arc::clone(&probes);
        let key = bloom_key.clone();
        pair(
            "bloom_contains_many_100",
            op(move |i| {
                let bf = bf.clone();
                let probes = Arc::clone(&probes_fk);
                async move {
                    bf.contains_many("all", &probes[i as usize % probes.len()])
                        .await?;
                    Ok(())
                }
            }),
            op(move |i| {
                let c = c.clone();
                let key = key.clone();
                async move {
                    let p = c.pipeline();
                    for item in 0..BLOOM_BATCH as u64 {
                        let h = (i.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ item) % bits;
                        for j in 0..hashes {
                            let () = p
                                .custom(
                                    CustomCommand::new_static(
                                        "GETBIT",
                                        ClusterHash::FirstKey,
                                        false,
                                    ),
                                    vec![
                                        Value::from(key.as_str()),
                                        Value::Integer((256 + (h + j * 7919) % bits) as i64),
                                    ],
                                )
                                .await?;
                        }
                    }
                    let _: Vec<i64> = p.all().await?;
                    Ok(())
                }
            }),
        );
    }

    let s = interleave(ctx.rounds(), ctx.load(), &contenders).await?;
    if s.len() != contenders.len() {
        bail!("expected {} summaries, got {}", contenders.len(), s.len());
    }
    for chunk in s.chunks(2) {
        let [fk, rw] = chunk else {
            bail!("an unpaired contender");
        };
        report.summary(&fk.name, fk, &format!("fredkit, {CONCURRENCY} tasks"));
        report.summary(&rw.name, rw, &format!("raw fred, {CONCURRENCY} tasks"));
        report.ratio(
            &format!("{}_vs_raw", fk.name),
            paired_ratio(fk, rw),
            "fredkit / raw fred commands, median of per-round ratios (goal >= 0.90)",
        );
    }
    Ok(())
}
