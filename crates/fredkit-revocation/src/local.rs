//! The in-process cache of revocations (feature `local-cache`):
//! [`LocalCacheOptions`] and the cache that answers without a round trip.
//!
//! # What it knows
//!
//! Each entry (one per token id, subject or organisation) holds a value —
//! `1`/`0` for a token id (revoked or not), the cut-off second for a subject
//! or organisation — with two kinds of knowledge:
//!
//! - a **lower bound**, always true: a token id once revoked stays revoked
//!   until it expires, and cut-offs only move forward. Events and reads both
//!   raise it (merge = max), so their order does not matter.
//! - **exact** knowledge ("the value was exactly this, as of a read started
//!   in subscription epoch `e` at instant `t`"), valid only while the epoch
//!   has not changed (no gap since) and `t` is younger than the cache `ttl`.
//!
//! "Revoked" can be answered from a lower bound alone. "Not revoked" needs
//! exact knowledge, because it depends on having seen every revocation since
//! the read. The epoch starts at 1 once the event channel is subscribed
//! (reads made earlier are never trusted for "not revoked") and moves on at
//! every gap, lag or undecodable event; if the subscription ends, it drops
//! to 0 and no "not revoked" is answered locally again.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use fredkit_core::traits::TokenClaims;
use fredkit_core::{Error, Result};
use quick_cache::sync::{Cache, EntryAction, EntryResult};

pub(crate) use crate::event::Event;
use crate::metrics::Counters;

/// Settings of the local cache (feature `local-cache`), turned on with
/// [`RevocationOptionsBuilder::local_cache`](crate::RevocationOptionsBuilder::local_cache).
///
/// ```
/// use std::time::Duration;
/// use fredkit_revocation::LocalCacheOptions;
///
/// let cache = LocalCacheOptions::default()
///     .capacity(100_000)                 // entries per kind (ids, subjects, orgs)
///     .ttl(Duration::from_secs(10));     // a "not revoked" is trusted this long
/// assert_eq!(cache.ttl_value(), Duration::from_secs(10));
/// ```
///
/// # The guarantee
///
/// Each store with the cache on subscribes to `prefix:events` (through
/// fredkit-pubsub) and every revocation made through any store (cache on or
/// off, unless built with
/// [`publish_events(false)`](crate::RevocationOptionsBuilder::publish_events))
/// publishes an event there. A store answers locally, with no round
/// trip:
///
/// - **"revoked"** when it has seen the revocation — from an event (usually
///   within a millisecond or two of the write, well under 1 s) or from an
///   earlier read;
/// - **"not revoked"** only from a read of Redis that started less than
///   `ttl` ago **and** after the last resubscription gap. Any gap, lag or
///   undecodable event flushes the cache and every "not revoked" is read from
///   Redis again.
///
/// So a revocation is seen by every instance within the pub/sub delivery time
/// while the subscription is healthy; if its event is lost in a way
/// fredkit-pubsub reports (reconnect, lag), every check after the report
/// goes to Redis — but fredkit-pubsub reports a reconnect only once it has
/// resubscribed, so between the subscriber losing its connection and that
/// report the cache keeps its answers (still at most `ttl` old). In the
/// worst case — an event lost without a trace, a revocation written without
/// publishing (another tool, a failed publish, the subscriber's node down on
/// a cluster while the token's node is up) — an instance answers "not
/// revoked" for at most `ttl` after its last read. Choose `ttl` as the
/// longest such window you accept.
/// Without the cache the store reads Redis on every check.
///
/// During an outage the cache keeps answering what it can (a revocation
/// cannot be written while Redis is down, so those answers stay right); the
/// [`FailMode`](fredkit_core::FailMode) decides only the reads it cannot
/// answer. The subscriber reconnects by itself; its gap flushes the cache.
///
/// Cost: three bounded maps (`quick_cache`, the in-process cache crate
/// fredkit-cache's L1 uses too) and one subscriber connection per store; a
/// local answer is two or three map lookups (well under a microsecond).
#[must_use]
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalCacheOptions {
    capacity: u64,
    ttl: Duration,
}

impl Default for LocalCacheOptions {
    /// Capacity 100 000 entries per kind, ttl 10 s.
    fn default() -> Self {
        LocalCacheOptions {
            capacity: 100_000,
            ttl: Duration::from_secs(10),
        }
    }
}

impl LocalCacheOptions {
    /// How many entries each of the three maps (token ids, subjects,
    /// organisations) holds at most; the entries least likely to be read
    /// again are evicted beyond it (an evicted entry costs one read on its
    /// next check). Default 100 000; must be at least 1.
    pub fn capacity(mut self, entries: u64) -> Self {
        self.capacity = entries;
        self
    }

    /// How long an answer read from Redis may be reused locally, and so the
    /// longest an instance can miss a revocation whose event it never
    /// received. Also the life of an entry: one not written (by a read or
    /// an event) for this long is forgotten, and its next check reads Redis.
    /// Default 10 s; must be between 10 ms and 1 hour.
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = ttl;
        self
    }

    /// The configured capacity.
    pub fn capacity_value(&self) -> u64 {
        self.capacity
    }

    /// The configured ttl.
    pub fn ttl_value(&self) -> Duration {
        self.ttl
    }

    pub(crate) fn validate(&self) -> Result<()> {
        if self.capacity == 0 {
            return Err(Error::config(
                "revocation local cache: capacity must be at least 1",
            ));
        }
        if self.ttl < Duration::from_millis(10) || self.ttl > Duration::from_secs(3600) {
            return Err(Error::config(format!(
                "revocation local cache: ttl must be between 10 ms and 1 hour, got {:?}",
                self.ttl
            )));
        }
        Ok(())
    }
}

/// No cut-off stored.
pub(crate) const NO_CUTOFF: i64 = i64::MIN;

#[derive(Debug, Clone, Copy)]
struct Known {
    /// Lower bound, always true.
    value: i64,
    /// The epoch of the read that gave exact knowledge; 0 = none.
    epoch: u64,
    /// When that read started.
    read_at: Instant,
    /// When the entry was last written: it is forgotten `ttl` after.
    written: Instant,
}

/// One of the three maps: bounded by entries (`quick_cache`: sharded,
/// a hit takes a shard's read lock), entries expire `ttl` after their last
/// write.
type Map = Cache<String, Known>;

pub(crate) struct LocalCache {
    jtis: Map,
    subs: Map,
    orgs: Map,
    /// 0 = not in sync (not subscribed yet, or the subscription ended).
    epoch: AtomicU64,
    /// Events applied so far. A read that started before an event and finds
    /// its entry gone (evicted) when it lands cannot tell whether it missed
    /// that event: it is then not trusted for "not revoked".
    events: AtomicU64,
    ttl: Duration,
    counters: Arc<Counters>,
}

/// The state a read started in, so that its answer is trusted only if
/// nothing was missed since.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ReadStart {
    epoch: u64,
    events: u64,
    at: Instant,
}

impl LocalCache {
    pub(crate) fn new(options: &LocalCacheOptions, counters: Arc<Counters>) -> LocalCache {
        let capacity = usize::try_from(options.capacity).unwrap_or(usize::MAX);
        let build = || Map::new(capacity);
        LocalCache {
            jtis: build(),
            subs: build(),
            orgs: build(),
            epoch: AtomicU64::new(0),
            events: AtomicU64::new(0),
            ttl: options.ttl,
            counters,
        }
    }

    /// Subscribed: from now on, reads can give exact knowledge.
    pub(crate) fn start(&self) {
        self.epoch.store(1, Ordering::Release);
    }

    /// The subscription ended: never answer "not revoked" locally again.
    pub(crate) fn disable(&self) {
        self.epoch.store(0, Ordering::Release);
        self.invalidate();
    }

    /// Messages may have been lost: forget everything, trust no earlier read.
    pub(crate) fn flush(&self) {
        // Bump only a live epoch; a disabled cache stays disabled.
        let _ = self
            .epoch
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |e| {
                (e != 0).then(|| e.wrapping_add(1).max(1))
            });
        self.invalidate();
        Counters::add(&self.counters.cache_flushes);
    }

    fn invalidate(&self) {
        self.jtis.clear();
        self.subs.clear();
        self.orgs.clear();
    }

    /// Whether `k` is still within its life (`ttl` since its last write).
    fn alive(&self, k: &Known, now: Instant) -> bool {
        now.saturating_duration_since(k.written) < self.ttl
    }

    /// The entry of `id` in `map`, unless it outlived `ttl`.
    fn get(&self, map: &Map, id: &str, now: Instant) -> Option<Known> {
        map.get(id).filter(|k| self.alive(k, now))
    }

    pub(crate) fn read_start(&self) -> ReadStart {
        ReadStart {
            epoch: self.epoch.load(Ordering::Acquire),
            events: self.events.load(Ordering::SeqCst),
            at: Instant::now(),
        }
    }

    fn exact(&self, k: &Known, now: Instant) -> bool {
        k.epoch != 0
            && k.epoch == self.epoch.load(Ordering::Acquire)
            && now.saturating_duration_since(k.read_at) < self.ttl
    }

    /// `Some(answer)` when the cache can answer whether `jti` is revoked.
    pub(crate) fn is_revoked(&self, jti: &str) -> Option<bool> {
        let now = Instant::now();
        let k = self.get(&self.jtis, jti, now)?;
        if k.value >= 1 {
            return Some(true);
        }
        self.exact(&k, now).then_some(false)
    }

    /// `Some(answer)` when the cache can answer whether a token issued at
    /// `iat` is covered by the cut-off of `id` in `map`.
    fn covered(&self, map: &Map, id: &str, iat: i64, now: Instant) -> Option<bool> {
        let k = self.get(map, id, now)?;
        if iat <= k.value {
            return Some(true);
        }
        self.exact(&k, now).then_some(false)
    }

    /// `Some(answer)` when the cache can answer [`check`](crate::Revocations::check).
    pub(crate) fn check(&self, claims: &TokenClaims, iat: i64) -> Option<bool> {
        let now = Instant::now();
        let jti = self.get(&self.jtis, claims.jti.as_str(), now);
        if matches!(jti, Some(k) if k.value >= 1) {
            return Some(true);
        }
        let sub = self.covered(&self.subs, &claims.sub, iat, now);
        if sub == Some(true) {
            return Some(true);
        }
        let org = match &claims.org {
            Some(org) => self.covered(&self.orgs, org, iat, now),
            None => Some(false),
        };
        if org == Some(true) {
            return Some(true);
        }
        let jti_exact = matches!(jti, Some(k) if self.exact(&k, now));
        (jti_exact && sub == Some(false) && org == Some(false)).then_some(false)
    }

    /// Merges `value` (and, for a read, the exact knowledge it gives) into
    /// the entry of `id`, atomically: a concurrent merge of the same id waits
    /// (under the shard's write lock when the entry exists, on the map's
    /// placeholder for `id` when it does not).
    fn merge(&self, map: &Map, id: &str, value: i64, exact: Option<ReadStart>) {
        let result = map.entry(id, None, |_, k| {
            let now = Instant::now();
            let old = self.alive(k, now).then_some(*k);
            *k = self.merged(old, value, exact, now);
            EntryAction::Retain(())
        });
        match result {
            EntryResult::Vacant(slot) | EntryResult::Replaced(slot, _) => {
                // Only this caller fills the slot; merges of the same id wait.
                let _ = slot.insert(self.merged(None, value, exact, Instant::now()));
            }
            EntryResult::Retained(()) | EntryResult::Removed(..) | EntryResult::Timeout => {}
        }
    }

    /// The entry after merging into `old` (`None`: absent or expired).
    fn merged(
        &self,
        old: Option<Known>,
        value: i64,
        exact: Option<ReadStart>,
        now: Instant,
    ) -> Known {
        // With no entry, an event applied since the read started may
        // have been evicted: the read's answer could predate it.
        let trusted = old.is_some()
            || exact.is_some_and(|start| start.events == self.events.load(Ordering::SeqCst));
        let mut k = old.unwrap_or(Known {
            value,
            epoch: 0,
            read_at: now,
            written: now,
        });
        k.value = k.value.max(value);
        k.written = now;
        if let Some(start) = exact.filter(|_| trusted) {
            if start.epoch != 0 && start.epoch >= k.epoch {
                k.epoch = start.epoch;
                k.read_at = start.at;
            }
        }
        k
    }

    /// Stores what a read of Redis that started at `start` found.
    pub(crate) fn record_jti(&self, jti: &str, revoked: bool, start: ReadStart) {
        self.merge(&self.jtis, jti, i64::from(revoked), Some(start));
    }

    /// Stores what a `check` read of Redis that started at `start` found.
    pub(crate) fn record_check(
        &self,
        claims: &TokenClaims,
        revoked_by_id: bool,
        sub_cut: Option<i64>,
        org_cut: Option<i64>,
        start: ReadStart,
    ) {
        self.record_jti(&claims.jti, revoked_by_id, start);
        self.merge(
            &self.subs,
            &claims.sub,
            sub_cut.unwrap_or(NO_CUTOFF),
            Some(start),
        );
        if let Some(org) = &claims.org {
            self.merge(&self.orgs, org, org_cut.unwrap_or(NO_CUTOFF), Some(start));
        }
    }

    /// Applies a revocation event (from the channel, or made here).
    pub(crate) fn apply(&self, event: &Event) -> bool {
        let map = match event.kind.as_str() {
            "jti" => &self.jtis,
            "sub" => &self.subs,
            "org" => &self.orgs,
            _ => return false,
        };
        // Counted before it lands, so a read recording after it sees it.
        self.events.fetch_add(1, Ordering::SeqCst);
        self.merge(map, &event.id, event.value, None);
        true
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn cache(ttl_ms: u64) -> LocalCache {
        LocalCache::new(
            &LocalCacheOptions::default().ttl(Duration::from_millis(ttl_ms)),
            Arc::new(Counters::default()),
        )
    }

    fn claims(org: Option<&str>) -> TokenClaims {
        TokenClaims {
            jti: "j1".into(),
            sub: "s1".into(),
            org: org.map(Into::into),
            iat: 100,
            exp: 200,
        }
    }

    #[test]
    fn reads_before_the_subscription_never_answer_not_revoked() {
        let c = cache(10_000);
        let start = c.read_start();
        c.record_check(&claims(None), false, None, None, start);
        assert_eq!(c.check(&claims(None), 100), None);
        c.start();
        assert_eq!(c.check(&claims(None), 100), None);
        c.record_check(&claims(None), false, None, None, c.read_start());
        assert_eq!(c.check(&claims(None), 100), Some(false));
    }

    #[test]
    fn a_gap_voids_every_not_revoked_but_an_event_still_revokes() {
        let c = cache(10_000);
        c.start();
        let start = c.read_start();
        c.record_check(&claims(Some("o")), false, None, None, start);
        assert_eq!(c.check(&claims(Some("o")), 100), Some(false));
        c.flush();
        assert_eq!(c.check(&claims(Some("o")), 100), None);
        // A read that started before the flush lands after it: not trusted.
        c.record_check(&claims(Some("o")), false, None, None, start);
        assert_eq!(c.check(&claims(Some("o")), 100), None);
        assert!(c.apply(&Event {
            kind: "org".into(),
            id: "o".into(),
            value: 100,
        }));
        assert_eq!(c.check(&claims(Some("o")), 100), Some(true));
        assert_eq!(c.check(&claims(Some("o")), 101), None);
    }

    #[test]
    fn a_stale_read_cannot_undo_an_event() {
        let c = cache(10_000);
        c.start();
        let start = c.read_start();
        c.apply(&Event {
            kind: "jti".into(),
            id: "j1".into(),
            value: 1,
        });
        c.record_jti("j1", false, start);
        assert_eq!(c.is_revoked("j1"), Some(true));
        c.apply(&Event {
            kind: "sub".into(),
            id: "s1".into(),
            value: 150,
        });
        c.record_check(&claims(None), false, Some(120), None, start);
        assert_eq!(c.check(&claims(None), 150), Some(true));
    }

    #[test]
    fn not_revoked_is_trusted_for_ttl_only() {
        let c = cache(200);
        c.start();
        let start = c.read_start();
        c.record_jti("j1", false, start);
        let answer = c.is_revoked("j1");
        if start.at.elapsed() < Duration::from_millis(200) {
            assert_eq!(answer, Some(false));
        }
        std::thread::sleep(Duration::from_millis(210));
        assert_eq!(c.is_revoked("j1"), None);
    }

    #[test]
    fn a_disabled_cache_answers_only_revoked() {
        let c = cache(10_000);
        c.start();
        c.record_jti("j1", false, c.read_start());
        c.disable();
        c.flush();
        c.record_jti("j1", false, c.read_start());
        assert_eq!(c.is_revoked("j1"), None);
        c.apply(&Event {
            kind: "jti".into(),
            id: "j1".into(),
            value: 1,
        });
        assert_eq!(c.is_revoked("j1"), Some(true));
    }

    #[test]
    fn a_read_older_than_an_evicted_event_is_not_trusted_for_not_revoked() {
        let c = cache(10_000);
        c.start();
        // A read starts before the revocation is written and answers "no".
        let start = c.read_start();
        // The revocation's event arrives; then the entry is evicted
        // (capacity) before the old read's answer is recorded.
        assert!(c.apply(&Event {
            kind: "jti".into(),
            id: "j1".into(),
            value: 1,
        }));
        c.jtis.remove("j1");
        c.record_jti("j1", false, start);
        assert_ne!(c.is_revoked("j1"), Some(false), "stale read undid an event");
        c.apply(&Event {
            kind: "sub".into(),
            id: "s1".into(),
            value: 150,
        });
        c.subs.remove("s1");
        c.record_check(&claims(None), false, None, None, start);
        assert_ne!(
            c.check(&claims(None), 150),
            Some(false),
            "stale read undid an event"
        );
        // A read started after the events is trusted again.
        c.record_check(&claims(None), false, None, None, c.read_start());
        assert_eq!(c.check(&claims(None), 100), Some(false));
    }

    #[test]
    fn entries_are_forgotten_ttl_after_their_last_write() {
        let c = cache(50);
        c.start();
        let revoked = Event {
            kind: "jti".into(),
            id: "j1".into(),
            value: 1,
        };
        assert!(c.apply(&revoked));
        assert_eq!(c.is_revoked("j1"), Some(true));
        std::thread::sleep(Duration::from_millis(60));
        // Past its life the entry is gone: the next check reads Redis.
        assert_eq!(c.is_revoked("j1"), None);
        assert_eq!(c.check(&claims(None), 100), None);
        // Written again, it lives again.
        assert!(c.apply(&revoked));
        assert_eq!(c.is_revoked("j1"), Some(true));
    }

    #[test]
    fn each_map_holds_at_most_capacity_entries() {
        let c = LocalCache::new(
            &LocalCacheOptions::default().capacity(128),
            Arc::new(Counters::default()),
        );
        c.start();
        for i in 0..10_000 {
            for kind in ["jti", "sub", "org"] {
                assert!(c.apply(&Event {
                    kind: kind.into(),
                    id: format!("id{i}"),
                    value: 1,
                }));
            }
        }
        for map in [&c.jtis, &c.subs, &c.orgs] {
            assert!(
                map.len() <= 128,
                "{} entries over a capacity of 128",
                map.len()
            );
            assert!(!map.is_empty());
        }
    }

    #[test]
    fn concurrent_merges_of_one_id_keep_the_highest_value() {
        // Each round, the threads merge their value into one fresh id at
        // once: a read-then-write merge loses the highest value in some.
        let c = Arc::new(cache(10_000));
        c.start();
        const THREADS: i64 = 4;
        const ROUNDS: usize = 10_000;
        let barrier = Arc::new(std::sync::Barrier::new(THREADS as usize));
        let threads: Vec<_> = (0..THREADS)
            .map(|t| {
                let (c, barrier) = (Arc::clone(&c), Arc::clone(&barrier));
                std::thread::spawn(move || {
                    for round in 0..ROUNDS {
                        barrier.wait();
                        c.apply(&Event {
                            kind: "sub".into(),
                            id: format!("s{round}"),
                            value: t,
                        });
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let lost = (0..ROUNDS)
            .filter(|round| {
                let k = c.get(&c.subs, &format!("s{round}"), Instant::now());
                k.map(|k| k.value) != Some(THREADS - 1)
            })
            .count();
        assert_eq!(
            lost, 0,
            "a lower cut-off overwrote the highest in {lost} rounds"
        );
    }

    #[test]
    fn unknown_event_kinds_are_not_applied() {
        let c = cache(10_000);
        assert!(!c.apply(&Event {
            kind: "tenant".into(),
            id: "x".into(),
            value: 1,
        }));
    }

    #[test]
    fn invalid_settings_are_config_errors() {
        assert!(LocalCacheOptions::default().capacity(0).validate().is_err());
        assert!(LocalCacheOptions::default()
            .ttl(Duration::from_millis(9))
            .validate()
            .is_err());
        assert!(LocalCacheOptions::default()
            .ttl(Duration::from_secs(3601))
            .validate()
            .is_err());
        assert!(LocalCacheOptions::default().validate().is_ok());
    }
}
