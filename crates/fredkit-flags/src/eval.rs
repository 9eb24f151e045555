//! Local evaluation: the [`Context`], the compiled snapshot and the answers
//! ([`Variant`], [`Reason`]). Nothing here touches Redis or allocates on
//! the evaluation path.

use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, OnceLock};

use serde_json::Value;
use xxhash_rust::xxh3::{xxh3_64, xxh3_64_with_seed};

use crate::model::{StoredFlag, BUCKETS};

/// Who a flag is evaluated for: an optional user id and the groups the
/// user belongs to. Borrowed, so building one costs nothing.
///
/// ```
/// use fredkit_flags::Context;
/// let anonymous = Context::anonymous();
/// let user = Context::user("42");
/// let staff = Context::user("7").groups(&["staff", "beta"]);
/// assert_eq!(staff.user_id(), Some("7"));
/// ```
#[derive(Debug, Clone, Copy, Default)]
pub struct Context<'a> {
    user: Option<&'a str>,
    groups: &'a [&'a str],
}

impl<'a> Context<'a> {
    /// No user, no groups: only flags fully on (or off) decide.
    pub const fn anonymous() -> Context<'static> {
        Context {
            user: None,
            groups: &[],
        }
    }

    /// The user `id` (allow/deny lists, rollout bucket).
    pub const fn user(id: &'a str) -> Context<'a> {
        Context {
            user: Some(id),
            groups: &[],
        }
    }

    /// These groups (allow/deny group lists).
    #[must_use]
    pub const fn groups(self, groups: &'a [&'a str]) -> Context<'a> {
        Context {
            user: self.user,
            groups,
        }
    }

    /// The user id, if any.
    pub fn user_id(&self) -> Option<&'a str> {
        self.user
    }

    /// The groups.
    pub fn group_list(&self) -> &'a [&'a str] {
        self.groups
    }
}

/// Why an evaluation gave its answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Reason {
    /// The flag is not in the snapshot (never created, deleted, or not
    /// loaded yet): the default from code.
    Unknown,
    /// The flag's expiry has passed (server clock): the default from code.
    Expired,
    /// The flag is disabled for everyone.
    Disabled,
    /// The user or one of the groups is in a deny list.
    Denied,
    /// The user or one of the groups is in an allow list.
    Allowed,
    /// Decided by the percentage rollout (in or out).
    Rollout,
    /// On for everyone (100 %).
    On,
}

impl Reason {
    /// A short lowercase name (`"rollout"`, `"denied"`...).
    pub fn as_str(&self) -> &'static str {
        match self {
            Reason::Unknown => "unknown",
            Reason::Expired => "expired",
            Reason::Disabled => "disabled",
            Reason::Denied => "denied",
            Reason::Allowed => "allowed",
            Reason::Rollout => "rollout",
            Reason::On => "on",
        }
    }

    /// Whether the answer is the default from code (unknown or expired flag).
    pub fn is_default(&self) -> bool {
        matches!(self, Reason::Unknown | Reason::Expired)
    }
}

/// The answer of [`Flags::evaluate`](crate::Flags::evaluate): on or off, and why.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Evaluation {
    /// Whether the flag is on for the context.
    pub enabled: bool,
    /// Why.
    pub reason: Reason,
}

/// The value a flag serves a context ([`Flags::variant`](crate::Flags::variant)).
/// Holds shared handles into the snapshot: cloning or dropping one never
/// allocates.
#[derive(Debug, Clone)]
pub struct Variant {
    pub(crate) value: Option<Arc<Value>>,
    pub(crate) name: Option<Arc<str>>,
    pub(crate) reason: Reason,
    pub(crate) enabled: bool,
}

impl Variant {
    /// The JSON value, or `None` when the flag serves none and code gave no default.
    pub fn json(&self) -> Option<&Value> {
        self.value.as_deref()
    }

    /// The value as a string, if it is one.
    pub fn as_str(&self) -> Option<&str> {
        self.json().and_then(Value::as_str)
    }

    /// The value as an `f64`, if it is a number.
    pub fn as_f64(&self) -> Option<f64> {
        self.json().and_then(Value::as_f64)
    }

    /// The value as an `i64`, if it is an integer that fits.
    pub fn as_i64(&self) -> Option<i64> {
        self.json().and_then(Value::as_i64)
    }

    /// The value as a `bool`, if it is one.
    pub fn as_bool(&self) -> Option<bool> {
        self.json().and_then(Value::as_bool)
    }

    /// The weighted variant's name, when one was chosen.
    pub fn name(&self) -> Option<&str> {
        self.name.as_deref()
    }

    /// Whether the flag is on for the context.
    pub fn is_enabled(&self) -> bool {
        self.enabled
    }

    /// Why this value.
    pub fn reason(&self) -> Reason {
        self.reason
    }
}

/// A `Hasher` for the snapshot's maps and sets: one xxh3 call per `str`
/// (the same hash the rollout uses), with no state to set up.
#[derive(Default)]
pub(crate) struct OneShot(u64);

impl Hasher for OneShot {
    #[inline]
    fn finish(&self) -> u64 {
        self.0
    }
    #[inline]
    fn write(&mut self, bytes: &[u8]) {
        self.0 = xxh3_64_with_seed(bytes, self.0);
    }
    #[inline]
    fn write_u8(&mut self, i: u8) {
        // `str`'s Hash writes a 0xff terminator after the bytes.
        self.0 = self.0.rotate_left(5) ^ u64::from(i);
    }
}

pub(crate) type Build = BuildHasherDefault<OneShot>;
pub(crate) type Set = HashSet<Box<str>, Build>;
pub(crate) type Map<V> = HashMap<Box<str>, V, Build>;

/// The rollout bucket (0 to 99 999) of `user` for a flag whose name hashes
/// to `seed`: xxh3-64 of the user id seeded with xxh3-64 of the flag name,
/// modulo 100 000. Stable across processes, versions and platforms.
#[inline]
pub fn bucket(flag: &str, user: &str) -> u32 {
    bucket_seeded(xxh3_64(flag.as_bytes()), user)
}

#[inline]
fn bucket_seeded(seed: u64, user: &str) -> u32 {
    // The remainder is below 100 000: it fits.
    (xxh3_64_with_seed(user.as_bytes(), seed) % u64::from(BUCKETS)) as u32
}

/// A default from code.
#[derive(Debug, Clone, Default)]
pub(crate) struct CodeDefault {
    pub(crate) enabled: bool,
    pub(crate) value: Option<Arc<Value>>,
}

/// A flag ready to evaluate: sets for the lists, the rollout threshold and
/// hash seed precomputed.
#[derive(Debug)]
pub(crate) struct Compiled {
    pub(crate) stored: StoredFlag,
    enabled: bool,
    expires_at: Option<u64>,
    threshold: u32,
    seed: u64,
    variant_seed: u64,
    allow_users: Set,
    deny_users: Set,
    allow_groups: Set,
    deny_groups: Set,
    value: Option<Arc<Value>>,
    /// (cumulative weight, name, value).
    variants: Vec<(u32, Arc<str>, Arc<Value>)>,
    total_weight: u32,
}

fn set(list: &[String]) -> Set {
    list.iter().map(|s| Box::from(s.as_str())).collect()
}

impl Compiled {
    pub(crate) fn new(stored: StoredFlag) -> Compiled {
        let def = &stored.def;
        // validate() checked 0..=100: the product is within 0..=100 000.
        let threshold = (def.percent * f64::from(BUCKETS) / 100.0).round() as u32;
        let seed = xxh3_64(stored.name.as_bytes());
        let mut cumulative = 0u32;
        let variants = def
            .variants
            .iter()
            .map(|v| {
                cumulative = cumulative.saturating_add(v.weight);
                (
                    cumulative,
                    Arc::<str>::from(v.name.as_str()),
                    Arc::new(v.value.clone()),
                )
            })
            .collect();
        Compiled {
            enabled: def.enabled,
            expires_at: stored.expires_at,
            threshold: threshold.min(BUCKETS),
            seed,
            variant_seed: seed ^ 0x9e37_79b9_7f4a_7c15,
            allow_users: set(&def.allow_users),
            deny_users: set(&def.deny_users),
            allow_groups: set(&def.allow_groups),
            deny_groups: set(&def.deny_groups),
            value: def.value.clone().map(Arc::new),
            variants,
            total_weight: cumulative,
            stored,
        }
    }

    #[inline]
    pub(crate) fn decide(&self, ctx: &Context<'_>, clock: &ServerClock) -> Evaluation {
        if let Some(at) = self.expires_at {
            if clock.now_ms() >= at {
                return Evaluation {
                    enabled: false,
                    reason: Reason::Expired,
                };
            }
        }
        let (enabled, reason) = self.decide_live(ctx);
        Evaluation { enabled, reason }
    }

    #[inline]
    fn decide_live(&self, ctx: &Context<'_>) -> (bool, Reason) {
        if !self.enabled {
            return (false, Reason::Disabled);
        }
        let any =
            |set: &Set, groups: &[&str]| !set.is_empty() && groups.iter().any(|g| set.contains(*g));
        if let Some(user) = ctx.user {
            if !self.deny_users.is_empty() && self.deny_users.contains(user) {
                return (false, Reason::Denied);
            }
        }
        if any(&self.deny_groups, ctx.groups) {
            return (false, Reason::Denied);
        }
        if let Some(user) = ctx.user {
            if !self.allow_users.is_empty() && self.allow_users.contains(user) {
                return (true, Reason::Allowed);
            }
        }
        if any(&self.allow_groups, ctx.groups) {
            return (true, Reason::Allowed);
        }
        if self.threshold >= BUCKETS {
            return (true, Reason::On);
        }
        match ctx.user {
            Some(user) if self.threshold > 0 => (
                bucket_seeded(self.seed, user) < self.threshold,
                Reason::Rollout,
            ),
            _ => (false, Reason::Rollout),
        }
    }

    /// The value served when on: a weighted variant or the flag's value.
    #[inline]
    pub(crate) fn served(&self, ctx: &Context<'_>) -> (Option<&Arc<Value>>, Option<&Arc<str>>) {
        if self.total_weight == 0 {
            return (self.value.as_ref(), None);
        }
        let point = match ctx.user {
            Some(user) => {
                (xxh3_64_with_seed(user.as_bytes(), self.variant_seed)
                    % u64::from(self.total_weight)) as u32
            }
            None => 0,
        };
        let chosen = self
            .variants
            .iter()
            .find(|(cumulative, _, _)| point < *cumulative)
            .or(self.variants.last());
        match chosen {
            Some((_, name, value)) => (Some(value), Some(name)),
            None => (self.value.as_ref(), None),
        }
    }
}

/// One immutable snapshot of a namespace: swapped whole (arc-swap) on
/// every change, read lock-free.
#[derive(Debug, Default)]
pub(crate) struct Snapshot {
    /// The namespace version it reflects; 0 = nothing loaded from Redis.
    pub(crate) version: u64,
    pub(crate) flags: Map<Arc<Compiled>>,
}

fn origin() -> coarsetime::Instant {
    static ORIGIN: OnceLock<coarsetime::Instant> = OnceLock::new();
    *ORIGIN.get_or_init(coarsetime::Instant::now)
}

fn local_ms() -> i64 {
    // Milliseconds since the process's origin; fits i64 for 292 million years.
    coarsetime::Instant::now_without_cache_update()
        .duration_since(origin())
        .as_millis() as i64
}

/// This instance's estimate of the server's clock: an offset measured
/// from `TIME` at every sync, applied to a monotonic coarse clock (a few
/// nanoseconds to read, millisecond resolution).
#[derive(Debug)]
pub(crate) struct ServerClock {
    /// server Unix ms minus local monotonic ms; `i64::MIN` = never measured
    /// (then the local wall clock stands in).
    offset: AtomicI64,
}

impl Default for ServerClock {
    fn default() -> Self {
        ServerClock {
            offset: AtomicI64::new(i64::MIN),
        }
    }
}

impl ServerClock {
    /// Records that the server's clock read `server_ms` at the local
    /// monotonic instant `at_local` (ms, from [`ServerClock::local_now`]).
    pub(crate) fn measured(&self, server_ms: u64, at_local: i64) {
        let server = i64::try_from(server_ms).unwrap_or(i64::MAX);
        self.offset
            .store(server.saturating_sub(at_local), Ordering::Relaxed);
    }

    pub(crate) fn local_now() -> i64 {
        local_ms()
    }

    /// The server's clock now, Unix milliseconds (estimate).
    #[inline]
    pub(crate) fn now_ms(&self) -> u64 {
        let offset = self.offset.load(Ordering::Relaxed);
        if offset == i64::MIN {
            return std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64);
        }
        u64::try_from(local_ms().saturating_add(offset)).unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::model::FlagDef;

    fn compiled(def: FlagDef) -> Compiled {
        Compiled::new(StoredFlag {
            name: "f".into(),
            rev: 1,
            expires_at: None,
            updated_at: 0,
            updated_by: String::new(),
            def,
        })
    }

    #[test]
    fn lists_decide_before_the_rollout() {
        let clock = ServerClock::default();
        let f = compiled(
            FlagDef::on()
                .percent(0.0)
                .allow_user("a")
                .deny_user("b")
                .allow_group("g")
                .deny_group("x"),
        );
        let e = |ctx: Context<'_>| f.decide(&ctx, &clock);
        assert_eq!(e(Context::user("a")).reason, Reason::Allowed);
        assert!(e(Context::user("a")).enabled);
        assert!(!e(Context::user("b").groups(&["g"])).enabled);
        assert!(e(Context::user("c").groups(&["g"])).enabled);
        assert!(!e(Context::user("a").groups(&["x"])).enabled);
        assert!(!e(Context::user("c")).enabled);
        assert!(!e(Context::anonymous()).enabled);
    }

    #[test]
    fn buckets_are_stable() {
        // Fixed by the xxh3 specification: a change here would move users.
        assert_eq!(bucket("flag", "42"), bucket("flag", "42"));
        assert_ne!(bucket("flag", "42"), bucket("other", "42"));
        assert!(bucket("flag", "42") < BUCKETS);
    }
}
