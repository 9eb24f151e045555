//! [`BloomFilter`]: "surely absent or probably present" on plain Redis
//! strings (SETBIT/GETBIT in one script), sized from the expected items and
//! the false-positive rate.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use fred::types::Value;
use fredkit_conn::Redis;
use fredkit_core::{Error, IntoKeySpace, KeySpace, Result, Script};
use xxhash_rust::xxh3::xxh3_128;

use crate::common::{script_error, ttl_ms, OpMetrics};

static BLOOM: Script = Script::new("bloom", include_str!("../scripts/bloom.lua"));

/// Items per script call of a bulk operation: bounds one script's run time
/// (K × this many SETBIT/GETBIT, about 10 ms) so it never blocks Redis for
/// long.
const BATCH: usize = 1000;
/// Script calls per pipeline (one round trip): the last call of a pipeline
/// waits for the server to run the ones before it, which must stay well
/// inside the command timeout (1 s by default) on a loaded server.
const PIPELINE: usize = 8;
/// The bit array starts after a 32-byte header.
const HEADER_LEN: usize = 32;
/// A Redis string holds at most 512 MiB: 2^32 bits, minus the header.
const MAX_BITS: u64 = (1 << 32) - 8 * HEADER_LEN as u64;

/// Builds a [`BloomFilter`]:
/// `BloomFilter::builder(&redis, "shop:bloom", 1_000_000)`.
///
/// ```no_run
/// # use std::time::Duration;
/// # use fredkit_collections::BloomFilter;
/// # fn f(redis: &fredkit_conn::Redis) -> fredkit_core::Result<()> {
/// let known_skus = BloomFilter::builder(redis, "shop:skus", 1_000_000) // expected items
///     .false_positive_rate(0.001)              // default 0.01
///     .ttl(Duration::from_secs(86_400))        // default none; set when a filter is created
///     .build()?;                               // 14,377,588 bits (1.7 MiB), 10 hashes
/// # Ok(()) }
/// ```
#[must_use = "call build() to get the BloomFilter"]
#[derive(Debug)]
pub struct BloomFilterBuilder {
    redis: Redis,
    prefix: Result<KeySpace>,
    expected_items: u64,
    fp_rate: f64,
    ttl: Option<Duration>,
}

impl BloomFilterBuilder {
    /// The false-positive rate wanted at `expected_items` items, in (0, 1).
    /// Default 0.01.
    pub fn false_positive_rate(mut self, rate: f64) -> Self {
        self.fp_rate = rate;
        self
    }

    /// A TTL set when a filter is created (by its first insert), not
    /// refreshed: rebuild the filter from the source of truth after it.
    /// Default: none — a filter never grows beyond its size, and a Bloom
    /// filter cannot forget items, so it is usually rebuilt on a schedule
    /// (write a new name, switch over) rather than expired.
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = Some(ttl);
        self
    }

    /// Derives the size `m = ceil(-n ln p / ln² 2)` bits and the hash count
    /// `k = round(m / n · ln 2)` (at least 1), and checks them. No I/O.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::InvalidInput`](fredkit_core::ErrorKind::InvalidInput)
    /// for a prefix [`KeySpace::new`] rejects, 0 expected items, a rate
    /// outside (0, 1), a TTL under 1 ms, or a size over what a Redis string
    /// holds (512 MiB: about 450 million items at 1 %).
    pub fn build(self) -> Result<BloomFilter> {
        let space = self.prefix?;
        let what = format!("BloomFilter {space}");
        let (bits, hashes) = sizing(&what, self.expected_items, self.fp_rate)?;
        let ttl_ms = match self.ttl {
            Some(t) => ttl_ms(&what, t)?,
            None => 0,
        };
        let mut header = format!("FKBLOOM1 {bits} {hashes}").into_bytes();
        header.resize(HEADER_LEN, b'.');
        let metrics = Arc::new(OpMetrics::new("bloom", space.prefix()));
        Ok(BloomFilter {
            redis: self.redis,
            space,
            bits,
            hashes,
            ttl_ms,
            header: Arc::from(header),
            metrics,
        })
    }
}

/// Bloom filters under one prefix — e.g. "every product id that exists", to
/// answer requests for ids that do not exist without touching the cache or
/// the database (cache penetration). An item reported absent was never
/// inserted; one reported present was inserted, or is a false positive at
/// about the configured rate while the filter holds at most the expected
/// number of items.
///
/// Built on plain Redis strings with `SETBIT`/`GETBIT` in one script (no
/// RedisBloom module). The client hashes each item once (xxh3-128) and sends
/// two 32-bit hashes per item; the script derives the item's `k` bit
/// positions by double hashing and sets or reads them.
///
/// # Keys
///
/// `<prefix>:{<name>}:bloom`: a string of a 32-byte header naming the sizing
/// (`FKBLOOM1 <bits> <hashes>`), then the bits. One slot per filter.
///
/// # Guarantees
///
/// - No false negatives: once [`insert`](Self::insert) returned, every
///   [`contains`](Self::contains) of the item is true (until the key
///   expires or is deleted).
/// - Bulk calls cost one round trip per 8,000 items: batches of 1,000
///   items, one script call each, sent 8 to a pipeline (`exec_pipelined`),
///   so that no call waits behind more server work than its command timeout
///   allows (a script of 1,000 items runs about 10 ms).
/// - Garbage: a key that is not a string, or a string without this filter's
///   header (another sizing, or not a filter), is an
///   [`ErrorKind::Protocol`](fredkit_core::ErrorKind::Protocol) error naming
///   the key; nothing is written. Never repaired silently: a filter built
///   with other settings would answer wrongly.
///
/// # Round trips
///
/// | operation | round trips | Redis commands |
/// |---|---|---|
/// | [`insert`](Self::insert), [`contains`](Self::contains) | 1 | `EVALSHA` (`TYPE`, `GETRANGE`, k × `SETBIT`/`GETBIT`) |
/// | [`insert_many`](Self::insert_many), [`contains_many`](Self::contains_many) | 1 per 8,000 items | pipelined `EVALSHA`, one per 1,000 items |
#[derive(Clone, Debug)]
pub struct BloomFilter {
    redis: Redis,
    space: KeySpace,
    bits: u64,
    hashes: u32,
    ttl_ms: u64,
    header: Arc<[u8]>,
    metrics: Arc<OpMetrics>,
}

impl BloomFilter {
    /// A builder of filters under `prefix` sized for `expected_items`. No
    /// I/O.
    pub fn builder(
        redis: &Redis,
        prefix: impl IntoKeySpace,
        expected_items: u64,
    ) -> BloomFilterBuilder {
        BloomFilterBuilder {
            redis: redis.clone(),
            prefix: prefix.into_key_space(),
            expected_items,
            fp_rate: 0.01,
            ttl: None,
        }
    }

    /// The key of filter `name`: `<prefix>:{<name>}:bloom`.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::InvalidInput`](fredkit_core::ErrorKind::InvalidInput)
    /// for an empty name.
    pub fn key(&self, name: &str) -> Result<String> {
        self.space.tagged(name, ["bloom"])
    }

    /// The size of the bit array.
    pub fn bits(&self) -> u64 {
        self.bits
    }

    /// The bit positions per item (hash functions).
    pub fn hashes(&self) -> u32 {
        self.hashes
    }

    /// Appends `item`'s two hashes (see `scripts/bloom.lua`): h1 in [0, m),
    /// h2 in [1, m), as little-endian u32s.
    fn push_hashes(&self, data: &mut Vec<u8>, item: &[u8]) {
        let h = xxh3_128(item);
        let lo = h as u64;
        let hi = (h >> 64) as u64;
        let h1 = lo % self.bits;
        let h2 = 1 + hi % (self.bits - 1);
        data.extend_from_slice(&u32::try_from(h1).unwrap_or(0).to_le_bytes());
        data.extend_from_slice(&u32::try_from(h2).unwrap_or(1).to_le_bytes());
    }

    async fn run<I>(&self, name: &str, op: &str, items: &[I]) -> Result<Vec<bool>>
    where
        I: AsRef<[u8]>,
    {
        let started = Instant::now();
        let r = async {
            let key = self.key(name)?;
            if items.is_empty() {
                return Ok(Vec::new());
            }
            let calls: Vec<(String, Vec<Value>)> = items
                .chunks(BATCH)
                .map(|chunk| {
                    let mut data = Vec::with_capacity(chunk.len() * 8);
                    for item in chunk {
                        self.push_hashes(&mut data, item.as_ref());
                    }
                    let args: Vec<Value> = vec![
                        op.into(),
                        Value::Bytes(bytes::Bytes::copy_from_slice(&self.header)),
                        Value::Integer(i64::try_from(self.bits).unwrap_or(0)),
                        Value::Integer(i64::from(self.hashes)),
                        Value::Integer(i64::try_from(self.ttl_ms).unwrap_or(i64::MAX)),
                        Value::Bytes(data.into()),
                    ];
                    (key.clone(), args)
                })
                .collect();
            let sizes: Vec<usize> = items.chunks(BATCH).map(<[I]>::len).collect();
            let mut out = Vec::with_capacity(items.len());
            let mut calls = calls.into_iter();
            let mut sizes = sizes.into_iter();
            loop {
                let window: Vec<(String, Vec<Value>)> = calls.by_ref().take(PIPELINE).collect();
                if window.is_empty() {
                    break;
                }
                let replies: Vec<Result<Value>> =
                    BLOOM.exec_pipelined(self.redis.client(), window).await;
                for (reply, size) in replies.into_iter().zip(sizes.by_ref()) {
                    let v = reply.map_err(script_error)?;
                    let flags = v.as_bytes().unwrap_or_default();
                    if flags.len() != size {
                        return Err(Error::protocol(format!(
                            "script bloom answered {} flags for {size} items of {key}",
                            flags.len()
                        )));
                    }
                    out.extend(flags.iter().map(|b| *b == b'1'));
                }
            }
            Ok(out)
        }
        .await;
        self.metrics.record(started, &r);
        r
    }

    /// Inserts `item` into filter `name` (created on first use); true when
    /// it was new (some of its bits were unset), false when it was
    /// (probably) there already. One round trip.
    ///
    /// Cancellation: a dropped future has set the item's bits or not;
    /// inserting is idempotent, so a retry (or fred's re-send) is harmless.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Protocol`](fredkit_core::ErrorKind::Protocol) naming the
    /// key when it holds something else than this filter; nothing written.
    pub async fn insert(&self, name: &str, item: impl AsRef<[u8]>) -> Result<bool> {
        let v = self.run(name, "add", &[item]).await?;
        Ok(v.first().copied().unwrap_or(false))
    }

    /// Whether `item` is (probably) in filter `name`; false for certain
    /// when not inserted (or when the filter does not exist). One round
    /// trip; writes nothing.
    ///
    /// # Errors
    ///
    /// As [`insert`](Self::insert).
    pub async fn contains(&self, name: &str, item: impl AsRef<[u8]>) -> Result<bool> {
        let v = self.run(name, "check", &[item]).await?;
        Ok(v.first().copied().unwrap_or(false))
    }

    /// Inserts every item of `items`; one flag per item as
    /// [`insert`](Self::insert) returns it (an item repeated within the call
    /// is new only the first time). One round trip per 8,000 items (a
    /// pipeline of 8 script calls of 1,000 items).
    ///
    /// Cancellation and errors: the batches are independent; after an error
    /// or a dropped future some batches may be in, which is harmless —
    /// insert them again.
    ///
    /// # Errors
    ///
    /// As [`insert`](Self::insert), the first batch's error.
    pub async fn insert_many<I: AsRef<[u8]>>(&self, name: &str, items: &[I]) -> Result<Vec<bool>> {
        self.run(name, "add", items).await
    }

    /// Checks every item of `items`: one flag per item as
    /// [`contains`](Self::contains) returns it. One round trip per 8,000
    /// items.
    ///
    /// # Errors
    ///
    /// As [`insert`](Self::insert).
    pub async fn contains_many<I: AsRef<[u8]>>(
        &self,
        name: &str,
        items: &[I],
    ) -> Result<Vec<bool>> {
        self.run(name, "check", items).await
    }
}

/// `(m, k)` for `n` items at false-positive rate `p`:
/// `m = ceil(-n ln p / ln² 2)` bits (at least 8), `k = round(m / n · ln 2)`
/// (1 to 64).
fn sizing(what: &str, n: u64, p: f64) -> Result<(u64, u32)> {
    if n == 0 {
        return Err(Error::invalid_input(format!(
            "{what}: expected_items must be at least 1"
        )));
    }
    if !(p > 0.0 && p < 1.0) {
        return Err(Error::invalid_input(format!(
            "{what}: the false-positive rate must be between 0 and 1 (exclusive), got {p}"
        )));
    }
    let ln2 = std::f64::consts::LN_2;
    let bits = (-(n as f64) * p.ln() / (ln2 * ln2)).ceil();
    if !bits.is_finite() || bits > MAX_BITS as f64 {
        return Err(Error::invalid_input(format!(
            "{what}: {n} items at a false-positive rate of {p} need {bits} bits, more than a \
             Redis string holds ({MAX_BITS}); split the items over several filters or accept a higher rate"
        )));
    }
    let bits = (bits as u64).max(8);
    let hashes = ((bits as f64 / n as f64) * ln2).round().clamp(1.0, 64.0) as u32;
    Ok((bits, hashes))
}
