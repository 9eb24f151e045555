//! fredkit-collections: a cart, a feed, presence, a leaderboard, a Bloom
//! filter.

use super::{step, Demo, Section, SectionFuture};
use anyhow::{ensure, Result};
use fred::prelude::*;
use fredkit_collections::{
    BloomFilter, Feed, Leaderboard, MergeOutcome, Presence, Ranked, Submit, TtlMap,
};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

pub(crate) const SECTION: Section = Section {
    name: "collections",
    title: "fredkit-collections: carts, feeds, presence, leaderboards, Bloom filters",
    run,
};

fn run(demo: &Demo) -> SectionFuture<'_> {
    Box::pin(tour(demo))
}

fn ranks(list: &[Ranked]) -> String {
    list.iter()
        .map(|r| format!("#{} {} ({})", r.rank, r.member, r.score))
        .collect::<Vec<_>>()
        .join(", ")
}

async fn tour(demo: &Demo) -> Result<()> {
    let r = &demo.redis;
    // A fresh prefix per run, so a second run against the same server
    // starts from empty structures.
    let run_id = SystemTime::now().duration_since(UNIX_EPOCH)?.as_millis();
    let prefix = |what: &str| format!("demo:{what}:{run_id}");

    // A cart: one hash per id, TTL reset by every write in the same script.
    let carts: TtlMap<String> = TtlMap::new(r, prefix("cart"), Duration::from_secs(3600))?;
    carts.add("anon-7f3a", "sku-1", 2).await?;
    carts
        .set("anon-7f3a", "sku-1", &"gift wrap".to_string())
        .await?;
    carts.add("user-42", "sku-1", 1).await?;
    let ttl: i64 = r.client().pttl(carts.key("user-42")?).await?;
    step(
        "carts.add(\"anon-7f3a\", \"sku-1\", 2); carts.add(\"user-42\", \"sku-1\", 1)",
        format!("PTTL of user-42's cart: {ttl} ms (set by the same script)"),
    );
    // At login: across cluster slots, in three idempotent steps.
    let merged = carts.merge_into("anon-7f3a", "user-42").await?;
    let qty = carts.quantity("user-42", "sku-1").await?;
    step(
        "carts.merge_into(\"anon-7f3a\", \"user-42\")  // at login; safe to retry",
        format!("{merged:?}; user-42 has {qty} of sku-1"),
    );
    ensure!(qty == 3, "the merge gave {qty}, not 3");
    let again = carts.merge_into("anon-7f3a", "user-42").await?;
    step(
        "carts.merge_into(\"anon-7f3a\", \"user-42\")  // again",
        format!("{again:?}"),
    );
    ensure!(
        again == MergeOutcome::NothingToMerge,
        "a second merge merged"
    );

    // A feed: push and trim in one step, never over the cap.
    let feed: Feed<String> = Feed::new(r, prefix("feed"), 3, Duration::from_secs(3600))?;
    for event in ["viewed sku-1", "added sku-1", "viewed sku-2", "checked out"] {
        feed.push("user-42", &event.to_string()).await?;
    }
    let newest = feed.latest("user-42", 10).await?;
    step(
        "4 x feed.push(...) with a cap of 3; feed.latest(10)",
        format!("{newest:?}"),
    );
    ensure!(newest.len() == 3, "the feed holds {} items", newest.len());

    // Presence: a sorted set scored by the server's clock, no sweeper.
    let presence = Presence::new(r, prefix("online"), Duration::from_secs(60))?;
    for user in ["user-42", "user-7"] {
        presence.heartbeat("site", user).await?;
    }
    presence.leave("site", "user-7").await?;
    step(
        "presence.heartbeat(user-42, user-7); presence.leave(user-7); presence.online()",
        format!("{:?}", presence.online("site").await?),
    );

    // A leaderboard: ties share a rank and are listed by name.
    let board = Leaderboard::builder(r, prefix("score")).build()?;
    for (member, score) in [("ada", 120.0), ("bob", 95.0), ("cy", 120.0), ("dee", 80.0)] {
        board.submit("world", member, score, Submit::Best).await?;
    }
    board.submit("world", "bob", 90.0, Submit::Best).await?; // not better: kept 95
    board
        .submit("world", "dee", 40.0, Submit::Increment)
        .await?; // 80 + 40
    let top = board.top("world", 3).await?;
    step(
        "submit Best: ada 120, bob 95, cy 120, dee 80; bob 90; dee +40 (Increment); top(3)",
        ranks(&top),
    );
    let around = board.around("world", "bob", 1).await?;
    step("board.around(\"world\", \"bob\", 1)", ranks(&around));

    // A Bloom filter: ids that exist, so "no such id" needs no lookup.
    let skus = BloomFilter::builder(r, prefix("skus"), 10_000)
        .false_positive_rate(0.01)
        .build()?;
    let ids: Vec<String> = (0..10_000).map(|i| format!("sku-{i}")).collect();
    skus.insert_many("all", &ids).await?;
    let probe = ["sku-17", "sku-9999", "sku-10001", "nope"];
    let found = skus.contains_many("all", &probe).await?;
    step(
        &format!(
            "BloomFilter: {} bits, {} hashes; insert_many(10,000 ids); contains_many({probe:?})",
            skus.bits(),
            skus.hashes()
        ),
        format!("{found:?}  // true = probably present, false = surely absent"),
    );
    ensure!(found[0] && found[1], "a false negative");
    Ok(())
}
