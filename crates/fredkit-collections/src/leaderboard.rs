//! [`Leaderboard`]: ranked scores in a sorted set, with best / latest /
//! increment submits, documented ties and optional daily or weekly boards.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use fred::{interfaces::SortedSetsInterface, types::Value};
use fredkit_conn::Redis;
use fredkit_core::{Error, IntoKeySpace, KeySpace, Result, Script};

use crate::common::{read_error, script_error, ttl_ms, OpMetrics};

static LEADERBOARD: Script = Script::new("leaderboard", include_str!("../scripts/leaderboard.lua"));

const DAY_MS: u64 = 86_400_000;

/// Which scores rank first.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum Order {
    /// A higher score is better (points). The default.
    #[default]
    HighFirst,
    /// A lower score is better (lap times, strokes).
    LowFirst,
}

/// How [`Leaderboard::submit`] combines a new score with the member's
/// current one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Submit {
    /// Keep the better of the two (by the board's [`Order`]); a new member
    /// gets the score.
    Best,
    /// Replace the current score.
    Latest,
    /// Add the score to the current one (absent counts as 0); a negative
    /// score subtracts.
    Increment,
}

/// The period of a periodic board: one sorted set per period, chosen by the
/// Redis server's clock (UTC), each expiring a set time after its period
/// ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Period {
    /// UTC days (00:00 to 24:00 UTC).
    Daily,
    /// ISO weeks (Monday 00:00 UTC to the next Monday).
    Weekly,
    /// Periods of this length counted from the Unix epoch (at least 1 s,
    /// whole milliseconds), e.g. hourly boards; also what tests use.
    Every(Duration),
}

impl Period {
    /// (length, offset) in ms: a period starts at `k * length - offset`.
    fn bounds(self) -> Result<(u64, u64)> {
        match self {
            Period::Daily => Ok((DAY_MS, 0)),
            // The epoch was a Thursday: Monday is 3 days later (mod 7).
            Period::Weekly => Ok((7 * DAY_MS, 3 * DAY_MS)),
            Period::Every(d) => {
                let ms = u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
                if !(1000..=i64::MAX as u64 / 4).contains(&ms) {
                    return Err(Error::invalid_input(format!(
                        "Leaderboard: a period must be between 1 s and about 73 million years, got {d:?}"
                    )));
                }
                Ok((ms, 0))
            }
        }
    }
}

/// A member with its score and rank, as [`Leaderboard::top`],
/// [`rank`](Leaderboard::rank) and [`around`](Leaderboard::around) return
/// them.
#[derive(Clone, Debug, PartialEq)]
pub struct Ranked {
    /// The member.
    pub member: String,
    /// Its score, as submitted (or summed).
    pub score: f64,
    /// 1 + the number of members with a strictly better score: equal scores
    /// share a rank, and the next rank skips (1, 2, 2, 4).
    pub rank: u64,
}

/// Builds a [`Leaderboard`]: `Leaderboard::builder(&redis, "game:lb")`.
///
/// ```no_run
/// # use std::time::Duration;
/// # use fredkit_collections::{Leaderboard, Order, Period};
/// # fn f(redis: &fredkit_conn::Redis) -> fredkit_core::Result<()> {
/// let fastest_laps = Leaderboard::builder(redis, "race:laps")
///     .order(Order::LowFirst)                       // lower time is better (default: HighFirst)
///     .period(Period::Daily, Duration::from_secs(7 * 86_400)) // one board per UTC day, kept a week after
///     .build()?;
/// # Ok(()) }
/// ```
#[must_use = "call build() to get the Leaderboard"]
#[derive(Debug)]
pub struct LeaderboardBuilder {
    redis: Redis,
    prefix: Result<KeySpace>,
    order: Order,
    period: Option<(Period, Duration)>,
    ttl: Option<Duration>,
}

impl LeaderboardBuilder {
    /// Which scores rank first. Default [`Order::HighFirst`].
    pub fn order(mut self, order: Order) -> Self {
        self.order = order;
        self
    }

    /// Makes every board periodic: submits and reads go to the current
    /// period's sorted set (by the Redis server's clock), which expires
    /// `keep` after its period ends (so [`top_previous`](Leaderboard::top_previous)
    /// can read the last one while `keep` lasts). Default: none (all-time
    /// boards).
    pub fn period(mut self, period: Period, keep: Duration) -> Self {
        self.period = Some((period, keep));
        self
    }

    /// For all-time boards: every submit resets the board's TTL to `ttl` (a
    /// board nobody plays expires). Default: none — an all-time board is
    /// meant to last, and grows only by its members; remove them with
    /// [`remove`](Leaderboard::remove). Ignored by periodic boards, whose
    /// keys always expire.
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = Some(ttl);
        self
    }

    /// Checks the settings. No I/O.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::InvalidInput`](fredkit_core::ErrorKind::InvalidInput)
    /// for a prefix [`KeySpace::new`] rejects, a TTL or `keep` under 1 ms,
    /// or a [`Period::Every`] under 1 s.
    pub fn build(self) -> Result<Leaderboard> {
        let space = self.prefix?;
        let what = format!("Leaderboard {space}");
        let (period_ms, offset_ms, ttl_ms) = match (self.period, self.ttl) {
            (Some((period, keep)), _) => {
                let (len, off) = period.bounds()?;
                (len, off, ttl_ms(&what, keep)?)
            }
            (None, Some(ttl)) => (0, 0, ttl_ms(&what, ttl)?),
            (None, None) => (0, 0, 0),
        };
        let metrics = Arc::new(OpMetrics::new("leaderboard", space.prefix()));
        Ok(Leaderboard {
            redis: self.redis,
            space,
            order: self.order,
            period_ms,
            offset_ms,
            ttl_ms,
            metrics,
        })
    }
}

/// Leaderboards under one prefix: one sorted set per board name (or per
/// board and period), member → score.
///
/// # Ranks and ties
///
/// A member's rank is 1 + the number of members with a strictly better
/// score (by the board's [`Order`]): equal scores share a rank and the next
/// rank skips ("1, 2, 2, 4"). Lists ([`top`](Self::top),
/// [`around`](Self::around)) give tied members in byte order of their
/// names. (Scores are stored negated on a [`Order::HighFirst`] board so that
/// Redis's ascending order, ties by name, is the board's order.)
///
/// # Keys
///
/// `<prefix>:{<board>}:lb` for an all-time board; `<prefix>:{<board>}:lb:<n>`
/// for period `n` of a periodic board (`n` counted from the Unix epoch by the
/// server's clock inside the script, in the board's slot). One slot per
/// board.
///
/// # Guarantees
///
/// - Every operation is one round trip; a submit is one script that applies
///   the rule ([`Submit`]) and sets the TTL atomically, exact under any
///   concurrency.
/// - A periodic board's period is chosen by the Redis server's clock, and its
///   key expires `keep` after the period ends (`PEXPIREAT`).
/// - Garbage (the key is not a sorted set) is an
///   [`ErrorKind::Protocol`](fredkit_core::ErrorKind::Protocol) error naming
///   the key; nothing is written. A sorted set cannot hold a bad score.
///
/// # Round trips
///
/// | operation | round trips | Redis commands |
/// |---|---|---|
/// | [`submit`](Self::submit) | 1 | `EVALSHA` (`ZADD [LT]`/`ZINCRBY`, `PEXPIRE`/`PEXPIREAT` when a TTL applies, `ZSCORE`; a wrong type is told by the `WRONGTYPE` of the write) |
/// | [`top`](Self::top) | 1 | `ZRANGE … WITHSCORES` (periodic: `EVALSHA`) |
/// | [`rank`](Self::rank), [`around`](Self::around) | 1 | `EVALSHA` (`ZSCORE`/`ZRANK`, `ZRANGE`, `ZCOUNT`) |
/// | [`size`](Self::size), [`remove`](Self::remove) | 1 | `ZCARD`, `ZREM` (periodic: `EVALSHA`) |
#[derive(Clone, Debug)]
pub struct Leaderboard {
    redis: Redis,
    space: KeySpace,
    order: Order,
    period_ms: u64,
    offset_ms: u64,
    ttl_ms: u64,
    metrics: Arc<OpMetrics>,
}

impl Leaderboard {
    /// A builder of boards under `prefix` (all-time, higher score first, no
    /// TTL unless set). No I/O.
    pub fn builder(redis: &Redis, prefix: impl IntoKeySpace) -> LeaderboardBuilder {
        LeaderboardBuilder {
            redis: redis.clone(),
            prefix: prefix.into_key_space(),
            order: Order::HighFirst,
            period: None,
            ttl: None,
        }
    }

    /// The base key of board `board`: `<prefix>:{<board>}:lb` (a periodic
    /// board appends `:<period number>`).
    ///
    /// # Errors
    ///
    /// [`ErrorKind::InvalidInput`](fredkit_core::ErrorKind::InvalidInput)
    /// for an empty board name.
    pub fn key(&self, board: &str) -> Result<String> {
        self.space.tagged(board, ["lb"])
    }

    /// The board's order.
    pub fn order(&self) -> Order {
        self.order
    }

    fn sign(&self) -> f64 {
        match self.order {
            Order::HighFirst => -1.0,
            Order::LowFirst => 1.0,
        }
    }

    fn periodic(&self) -> bool {
        self.period_ms > 0
    }

    async fn run(
        &self,
        board: &str,
        op: &str,
        a: Value,
        b: Value,
        previous: bool,
    ) -> Result<Value> {
        let key = self.key(board)?;
        let int = |n: u64| Value::Integer(i64::try_from(n).unwrap_or(i64::MAX));
        let args: Vec<Value> = vec![
            op.into(),
            int(self.period_ms),
            int(self.offset_ms),
            int(self.ttl_ms),
            if self.sign() < 0.0 { "-1" } else { "1" }.into(),
            a,
            b,
            if previous { "1" } else { "0" }.into(),
        ];
        LEADERBOARD
            .exec::<_, Value, _, _>(self.redis.client(), key, args)
            .await
            .map_err(script_error)
    }

    async fn timed<T>(&self, f: impl std::future::Future<Output = Result<T>>) -> Result<T> {
        let started = Instant::now();
        let r = f.await;
        self.metrics.record(started, &r);
        r
    }

    /// Submits `score` for `member` on `board` under `rule`, and returns the
    /// member's score after it. One atomic round trip; sets the TTL (or the
    /// period's expiry).
    ///
    /// Cancellation: a dropped future has applied the submit once or not at
    /// all; fred may re-send it after a connection break, which is harmless
    /// for [`Submit::Best`] and [`Submit::Latest`] and adds twice for
    /// [`Submit::Increment`].
    ///
    /// # Errors
    ///
    /// [`ErrorKind::InvalidInput`](fredkit_core::ErrorKind::InvalidInput)
    /// for a score that is not finite;
    /// [`ErrorKind::Protocol`](fredkit_core::ErrorKind::Protocol) naming the
    /// key when it is not a sorted set;
    /// [`ErrorKind::Script`](fredkit_core::ErrorKind::Script) when an
    /// increment makes the score not a number. Nothing is written on error.
    pub async fn submit(&self, board: &str, member: &str, score: f64, rule: Submit) -> Result<f64> {
        self.timed(async {
            if !score.is_finite() {
                return Err(Error::invalid_input(format!(
                    "Leaderboard {}: the score of a submit must be finite, got {score}",
                    self.space
                )));
            }
            let op = match rule {
                Submit::Best => "best",
                Submit::Latest => "latest",
                Submit::Increment => "incr",
            };
            let signed = self.sign() * score;
            let v = self
                .run(board, op, member.into(), Value::Double(signed), false)
                .await?;
            let s = parse_score(&v).ok_or_else(|| {
                Error::protocol(format!("script leaderboard answered {v:?} to a submit"))
            })?;
            Ok(self.unsign(s))
        })
        .await
    }

    fn unsign(&self, internal: f64) -> f64 {
        // + 0.0 turns -0.0 into 0.0.
        self.sign() * internal + 0.0
    }

    /// The best `n` members of `board`, best first, with ranks (see
    /// [ties](Self#ranks-and-ties)). Fewer when the board has fewer; empty
    /// when it does not exist. One round trip.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Protocol`](fredkit_core::ErrorKind::Protocol) naming the
    /// key when it is not a sorted set.
    pub async fn top(&self, board: &str, n: u32) -> Result<Vec<Ranked>> {
        self.timed(async {
            if n == 0 {
                return Ok(Vec::new());
            }
            if self.periodic() {
                let v = self
                    .run(board, "top", Value::Integer(i64::from(n)), "".into(), false)
                    .await?;
                return self.ranked_window(board, v);
            }
            let key = self.key(board)?;
            let v: Value = self
                .redis
                .client()
                .zrange(key.as_str(), 0, i64::from(n) - 1, None, false, None, true)
                .await
                .map_err(|e| read_error(&key, "sorted set", e))?;
            self.ranked(board, 1, 0, flatten(v))
        })
        .await
    }

    /// Of a periodic board, the best `n` members of the period before the
    /// current one (yesterday's winners), while its key is kept. One round
    /// trip.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::InvalidInput`](fredkit_core::ErrorKind::InvalidInput) on
    /// an all-time board; otherwise as [`top`](Self::top).
    pub async fn top_previous(&self, board: &str, n: u32) -> Result<Vec<Ranked>> {
        self.timed(async {
            if !self.periodic() {
                return Err(Error::invalid_input(format!(
                    "Leaderboard {}: top_previous needs a periodic board (builder's period())",
                    self.space
                )));
            }
            if n == 0 {
                return Ok(Vec::new());
            }
            let v = self
                .run(board, "top", Value::Integer(i64::from(n)), "".into(), true)
                .await?;
            self.ranked_window(board, v)
        })
        .await
    }

    /// `member`'s rank and score on `board`, `None` when absent. One round
    /// trip.
    ///
    /// # Errors
    ///
    /// As [`top`](Self::top).
    pub async fn rank(&self, board: &str, member: &str) -> Result<Option<Ranked>> {
        self.timed(async {
            let v = self
                .run(board, "rank", member.into(), "".into(), false)
                .await?;
            let items = flatten(v);
            if items.is_empty() {
                return Ok(None);
            }
            let bad = || Error::protocol(format!("script leaderboard answered {items:?} to rank"));
            let rank = items.first().and_then(Value::as_u64).ok_or_else(bad)?;
            let score = items.get(1).and_then(parse_score).ok_or_else(bad)?;
            Ok(Some(Ranked {
                member: member.to_string(),
                score: self.unsign(score),
                rank,
            }))
        })
        .await
    }

    /// The members around `member` on `board`: up to `n` before it, itself,
    /// and up to `n` after it, best first, with ranks; empty when `member`
    /// is absent. One round trip.
    ///
    /// # Errors
    ///
    /// As [`top`](Self::top).
    pub async fn around(&self, board: &str, member: &str, n: u32) -> Result<Vec<Ranked>> {
        self.timed(async {
            let v = self
                .run(
                    board,
                    "around",
                    member.into(),
                    Value::Integer(i64::from(n)),
                    false,
                )
                .await?;
            self.ranked_window(board, v)
        })
        .await
    }

    /// The number of members on `board` (0 when it does not exist). One
    /// round trip.
    ///
    /// # Errors
    ///
    /// As [`top`](Self::top).
    pub async fn size(&self, board: &str) -> Result<u64> {
        self.timed(async {
            if self.periodic() {
                let v = self.run(board, "size", "".into(), "".into(), false).await?;
                return v.as_u64().ok_or_else(|| {
                    Error::protocol(format!("script leaderboard answered {v:?} to size"))
                });
            }
            let key = self.key(board)?;
            self.redis
                .client()
                .zcard(key.as_str())
                .await
                .map_err(|e| read_error(&key, "sorted set", e))
        })
        .await
    }

    /// Removes `member` from `board`; true when it was there. One round
    /// trip.
    ///
    /// # Errors
    ///
    /// As [`top`](Self::top).
    pub async fn remove(&self, board: &str, member: &str) -> Result<bool> {
        self.timed(async {
            if self.periodic() {
                let v = self
                    .run(board, "remove", member.into(), "".into(), false)
                    .await?;
                return Ok(v.as_i64() == Some(1));
            }
            let key = self.key(board)?;
            let n: i64 = self
                .redis
                .client()
                .zrem(key.as_str(), member)
                .await
                .map_err(|e| read_error(&key, "sorted set", e))?;
            Ok(n == 1)
        })
        .await
    }

    /// `{rank of the first, position of the first, m1, s1, …}` from the
    /// script.
    fn ranked_window(&self, board: &str, v: Value) -> Result<Vec<Ranked>> {
        let items = flatten(v);
        let mut it = items.into_iter();
        let (Some(rank), Some(pos)) = (it.next(), it.next()) else {
            return Ok(Vec::new());
        };
        match (rank.as_u64(), pos.as_u64()) {
            (Some(rank), Some(pos)) => self.ranked(board, rank, pos, it.collect()),
            _ => Err(Error::protocol(format!(
                "script leaderboard answered rank {rank:?} at position {pos:?} for board {board:?}"
            ))),
        }
    }

    /// Ranks `m1, s1, m2, s2, …` in ascending internal order; the first has
    /// rank `first_rank` and sits at 0-based position `first_pos` of the
    /// whole board. A member with the same score as the one before it shares
    /// its rank; any other has rank = its position + 1 (everyone before it is
    /// strictly better).
    fn ranked(
        &self,
        board: &str,
        first_rank: u64,
        first_pos: u64,
        items: Vec<Value>,
    ) -> Result<Vec<Ranked>> {
        let bad = || {
            Error::protocol(format!(
                "a sorted-set reply for board {board:?} is malformed"
            ))
        };
        let mut out: Vec<Ranked> = Vec::with_capacity(items.len() / 2);
        let mut it = items.into_iter();
        let mut prev: Option<f64> = None;
        let mut pos = first_pos;
        while let Some(m) = it.next() {
            let s = it.next().ok_or_else(bad)?;
            let member = m
                .as_bytes()
                .map(|b| String::from_utf8_lossy(b).into_owned())
                .ok_or_else(bad)?;
            let internal = parse_score(&s).ok_or_else(bad)?;
            let rank = match (prev, out.last()) {
                (Some(p), Some(last)) if p == internal => last.rank,
                (None, _) => first_rank,
                _ => pos.saturating_add(1),
            };
            out.push(Ranked {
                member,
                score: self.unsign(internal),
                rank,
            });
            prev = Some(internal);
            pos = pos.saturating_add(1);
        }
        Ok(out)
    }
}

/// A score reply: a double (RESP3) or its decimal text, `inf`/`-inf` too.
fn parse_score(v: &Value) -> Option<f64> {
    match v {
        Value::Double(f) => Some(*f),
        Value::Integer(i) => Some(*i as f64),
        other => other
            .as_bytes()
            .and_then(|b| std::str::from_utf8(b).ok())
            .and_then(|s| s.parse::<f64>().ok()),
    }
}

/// An array reply as a flat list (RESP3 gives `WITHSCORES` as pairs).
fn flatten(v: Value) -> Vec<Value> {
    match v {
        Value::Null => Vec::new(),
        Value::Array(items) => {
            let mut out = Vec::with_capacity(items.len());
            for item in items {
                match item {
                    Value::Array(inner) => out.extend(inner),
                    other => out.push(other),
                }
            }
            out
        }
        other => vec![other],
    }
}
