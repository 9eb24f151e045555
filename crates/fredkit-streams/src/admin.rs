//! [`StreamAdmin`]: consumer groups, pending summaries, lag, dead letters.

use std::fmt;

use bytes::Bytes;
use fred::interfaces::StreamsInterface;
use fred::types::streams::XID;
use fred::types::Value;
use fredkit_conn::Redis;
use fredkit_core::{Codec, Error, Result, Script};
use serde::de::DeserializeOwned;
use tracing::Instrument;

use crate::fields::{PAYLOAD_FIELD, RESERVED_PREFIX};
use crate::keys::{StreamId, StreamKeys};
use crate::reply::{self, int, text};

static REPLAY: Script = Script::new("streams_replay", include_str!("../scripts/replay.lua"));

/// Where a new consumer group starts reading.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum StartFrom {
    /// Every entry still in the stream (`0`): the queue semantics, nothing
    /// published before the workers first started is skipped. The default.
    #[default]
    Beginning,
    /// Only entries added after the group is created (`$`).
    NewOnly,
    /// Entries after this id.
    After(StreamId),
}

impl StartFrom {
    fn id(&self) -> String {
        match self {
            StartFrom::Beginning => "0".to_string(),
            StartFrom::NewOnly => "$".to_string(),
            StartFrom::After(id) => id.as_str().to_string(),
        }
    }
}

/// `XPENDING key group`: what a group has delivered but not acknowledged.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct PendingSummary {
    /// Entries delivered and not yet acknowledged.
    pub total: u64,
    /// Smallest pending id.
    pub oldest: Option<StreamId>,
    /// Largest pending id.
    pub newest: Option<StreamId>,
    /// Pending entries per consumer name.
    pub consumers: Vec<(String, u64)>,
}

/// One consumer group, from `XINFO GROUPS`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct GroupInfo {
    /// Group name.
    pub name: String,
    /// Consumers known to the group.
    pub consumers: u64,
    /// Entries delivered and not acknowledged.
    pub pending: u64,
    /// The last id delivered to the group.
    pub last_delivered_id: Option<StreamId>,
    /// Entries read by the group so far (Redis 7+; `None` before).
    pub entries_read: Option<u64>,
    /// Entries in the stream not yet delivered to the group (Redis 7+).
    /// `None` on older servers, and when Redis cannot tell (after deletions
    /// or a group created at an arbitrary id).
    pub lag: Option<u64>,
}

/// One entry of the dead-letter stream.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct DeadLetter {
    /// The dead letter's own id (in the dead-letter stream).
    pub id: StreamId,
    /// The id the entry had in the stream.
    pub original_id: Option<StreamId>,
    /// The consumer group that gave up on it.
    pub group: String,
    /// The consumer that dead-lettered it.
    pub consumer: String,
    /// How many times it had been delivered (the server's delivery count).
    pub deliveries: u64,
    /// The last error: the handler's error, the decode error, or the
    /// "delivered N times without an outcome" note.
    pub error: String,
    /// When it was dead-lettered (Redis server time, ms since the epoch).
    pub at_ms: u64,
    /// The original payload (`None` when the entry had been trimmed away or
    /// had no payload field).
    pub payload: Option<Bytes>,
    /// The original headers.
    pub headers: Vec<(String, String)>,
}

impl DeadLetter {
    /// Decodes the original payload.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Codec`](fredkit_core::ErrorKind::Codec) when there is no
    /// payload or it does not decode.
    pub fn decode<T: DeserializeOwned, C: Codec>(&self, codec: &C) -> Result<T> {
        match &self.payload {
            Some(p) => codec.decode(p),
            None => Err(Error::Codec {
                op: "decode",
                codec: codec.name(),
                message: "the dead letter has no payload (the entry was trimmed before it was dead-lettered)".into(),
            }),
        }
    }

    fn from_entry(e: reply::RawEntry) -> DeadLetter {
        let mut d = DeadLetter {
            id: e.id,
            original_id: None,
            group: String::new(),
            consumer: String::new(),
            deliveries: 0,
            error: String::new(),
            at_ms: 0,
            payload: None,
            headers: Vec::new(),
        };
        for (k, v) in e.fields {
            let s = || String::from_utf8_lossy(&v).into_owned();
            match &*k {
                PAYLOAD_FIELD => d.payload = Some(v.clone()),
                "dlq.id" => d.original_id = Some(StreamId::new(s())),
                "dlq.group" => d.group = s(),
                "dlq.consumer" => d.consumer = s(),
                "dlq.deliveries" => d.deliveries = s().parse().unwrap_or(0),
                "dlq.error" => d.error = s(),
                "dlq.at" => d.at_ms = s().parse().unwrap_or(0),
                other if other.starts_with(RESERVED_PREFIX) => {}
                _ => d.headers.push((k.to_string(), s())),
            }
        }
        d
    }
}

/// What [`StreamAdmin::replay_dead_letters`] did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ReplayReport {
    /// Dead letters moved back to the stream.
    pub replayed: u64,
    /// Dead letters left in place because they carry no payload.
    pub skipped: u64,
    /// The new ids in the stream.
    pub new_ids: Vec<StreamId>,
}

/// Operator tools for one stream: create consumer groups, inspect pending
/// entries and lag, list and replay dead letters.
///
/// | call | round trips |
/// |---|---|
/// | [`create_group`](Self::create_group) | 1 (`XGROUP CREATE ... MKSTREAM`) |
/// | [`pending`](Self::pending) | 1 (`XPENDING`) |
/// | [`groups`](Self::groups), [`group`](Self::group) | 1 (`XINFO GROUPS`) |
/// | [`dead_letters`](Self::dead_letters), [`dead_letters_after`](Self::dead_letters_after) | 1 (`XRANGE`) |
/// | [`dead_letter_count`](Self::dead_letter_count) | 1 (`XLEN`) |
/// | [`discard_dead_letters`](Self::discard_dead_letters) | 1 (`XDEL`) |
/// | [`replay_dead_letters`](Self::replay_dead_letters) | 1 (script) |
///
/// All are reads except `create_group` and `replay_dead_letters`; dropping a
/// future halfway leaves Redis as it was or with the call completed.
#[derive(Clone)]
pub struct StreamAdmin {
    redis: Redis,
    keys: StreamKeys,
}

impl fmt::Debug for StreamAdmin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StreamAdmin")
            .field("keys", &self.keys)
            .finish()
    }
}

impl StreamAdmin {
    /// Tools for the stream at `keys`.
    pub fn new(redis: &Redis, keys: StreamKeys) -> StreamAdmin {
        StreamAdmin {
            redis: redis.clone(),
            keys,
        }
    }

    /// The stream's keys.
    pub fn keys(&self) -> &StreamKeys {
        &self.keys
    }

    fn span(&self, op: &'static str) -> tracing::Span {
        tracing::debug_span!("fredkit.streams.admin", op, stream = %self.keys.name())
    }

    /// Creates consumer group `group` starting at `start`, creating the
    /// stream if needed (`MKSTREAM`). Idempotent: returns `true` when the
    /// group was created, `false` when it already existed (`BUSYGROUP`; its
    /// position is left alone).
    ///
    /// # Errors
    ///
    /// Connection errors; [`ErrorKind::InvalidInput`](fredkit_core::ErrorKind::InvalidInput)
    /// for an empty group name; a protocol error when the key holds something
    /// other than a stream.
    pub async fn create_group(&self, group: &str, start: StartFrom) -> Result<bool> {
        create_group(&self.redis, &self.keys, group, &start)
            .instrument(self.span("create_group"))
            .await
    }

    /// `XPENDING` summary of `group`.
    ///
    /// # Errors
    ///
    /// Connection errors; a protocol error when the group does not exist
    /// (`NOGROUP`).
    pub async fn pending(&self, group: &str) -> Result<PendingSummary> {
        self.pending_inner(group)
            .instrument(self.span("pending"))
            .await
    }

    async fn pending_inner(&self, group: &str) -> Result<PendingSummary> {
        let v: Value = self
            .redis
            .client()
            .xpending(self.keys.stream(), group, ())
            .await?;
        let mut parts = reply::array(v)?.into_iter();
        let total = parts.next().as_ref().and_then(int).unwrap_or(0).max(0) as u64;
        let oldest = parts.next().as_ref().and_then(text).map(StreamId::new);
        let newest = parts.next().as_ref().and_then(text).map(StreamId::new);
        let mut consumers = Vec::new();
        if let Some(list) = parts.next() {
            for c in reply::array(list)? {
                let mut it = reply::array(c)?.into_iter();
                if let (Some(name), Some(n)) = (it.next(), it.next()) {
                    if let (Some(name), Some(n)) = (text(&name), int(&n)) {
                        consumers.push((name, n.max(0) as u64));
                    }
                }
            }
        }
        Ok(PendingSummary {
            total,
            oldest,
            newest,
            consumers,
        })
    }

    /// Every consumer group of the stream with its pending count and lag
    /// (`XINFO GROUPS`). Empty when the stream does not exist.
    ///
    /// # Errors
    ///
    /// Connection errors; a protocol error when the key is not a stream.
    pub async fn groups(&self) -> Result<Vec<GroupInfo>> {
        self.groups_inner().instrument(self.span("groups")).await
    }

    async fn groups_inner(&self) -> Result<Vec<GroupInfo>> {
        let v: Value = match self.redis.client().xinfo_groups(self.keys.stream()).await {
            Ok(v) => v,
            Err(e) if e.details().contains("no such key") => return Ok(Vec::new()),
            Err(e) => return Err(e.into()),
        };
        let mut out = Vec::new();
        for g in reply::array(v)? {
            let mut info = GroupInfo::default();
            for (k, v) in reply::pairs(g)? {
                match k.as_str() {
                    "name" => info.name = text(&v).unwrap_or_default(),
                    "consumers" => info.consumers = int(&v).unwrap_or(0).max(0) as u64,
                    "pending" => info.pending = int(&v).unwrap_or(0).max(0) as u64,
                    "last-delivered-id" => info.last_delivered_id = text(&v).map(StreamId::new),
                    "entries-read" => info.entries_read = int(&v).map(|n| n.max(0) as u64),
                    "lag" => info.lag = int(&v).map(|n| n.max(0) as u64),
                    _ => {}
                }
            }
            out.push(info);
        }
        Ok(out)
    }

    /// [`groups`](Self::groups), just the one named `group`.
    ///
    /// # Errors
    ///
    /// As [`groups`](Self::groups).
    pub async fn group(&self, group: &str) -> Result<Option<GroupInfo>> {
        Ok(self.groups().await?.into_iter().find(|g| g.name == group))
    }

    /// Up to `count` dead letters, oldest first.
    ///
    /// # Errors
    ///
    /// Connection errors.
    pub async fn dead_letters(&self, count: u64) -> Result<Vec<DeadLetter>> {
        let v: Value = self
            .redis
            .client()
            .xrange(self.keys.dead_letter(), "-", "+", Some(count))
            .instrument(self.span("dead_letters"))
            .await?;
        Ok(reply::entries(v)?
            .into_iter()
            .map(DeadLetter::from_entry)
            .collect())
    }

    /// Up to `count` dead letters that come after the dead letter `after`
    /// (exclusive), oldest first: the next page after
    /// [`dead_letters`](Self::dead_letters) (pass the last id you got).
    /// One round trip (`XRANGE`).
    ///
    /// ```no_run
    /// # async fn run(admin: fredkit_streams::StreamAdmin) -> fredkit_core::Result<()> {
    /// let mut page = admin.dead_letters(100).await?;
    /// while let Some(last) = page.last().map(|d| d.id.clone()) {
    ///     for d in &page {
    ///         println!("{} {}: {}", d.group, d.deliveries, d.error);
    ///     }
    ///     page = admin.dead_letters_after(&last, 100).await?;
    /// }
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    ///
    /// Connection errors.
    pub async fn dead_letters_after(
        &self,
        after: &StreamId,
        count: u64,
    ) -> Result<Vec<DeadLetter>> {
        let start = format!("({after}");
        let v: Value = self
            .redis
            .client()
            .xrange(self.keys.dead_letter(), start.as_str(), "+", Some(count))
            .instrument(self.span("dead_letters_after"))
            .await?;
        Ok(reply::entries(v)?
            .into_iter()
            .map(DeadLetter::from_entry)
            .collect())
    }

    /// How many dead letters there are (`XLEN`).
    ///
    /// # Errors
    ///
    /// Connection errors.
    pub async fn dead_letter_count(&self) -> Result<u64> {
        let n: i64 = self.redis.client().xlen(self.keys.dead_letter()).await?;
        Ok(n.max(0) as u64)
    }

    /// Deletes the given dead letters (`XDEL`, one round trip) and returns
    /// how many existed: for entries nobody will replay, e.g. those without a
    /// payload, which [`replay_dead_letters`](Self::replay_dead_letters)
    /// skips and which would otherwise stay at the head of the dead-letter
    /// stream.
    ///
    /// # Errors
    ///
    /// Connection errors.
    pub async fn discard_dead_letters(&self, ids: &[StreamId]) -> Result<u64> {
        if ids.is_empty() {
            return Ok(0);
        }
        let n: i64 = self
            .redis
            .client()
            .xdel(
                self.keys.dead_letter(),
                ids.iter().map(StreamId::as_str).collect::<Vec<_>>(),
            )
            .instrument(self.span("discard_dead_letters"))
            .await?;
        Ok(n.max(0) as u64)
    }

    /// Moves up to `count` of the oldest dead letters back to the stream, in
    /// one script: each is appended as a new entry (original payload and
    /// headers, plus `dlq.replayed_from` = its original id and
    /// `dlq.replay_group` = the group that dead-lettered it) and removed from
    /// the dead-letter stream, atomically. Only that group handles the
    /// replay: the workers of the stream's other groups, which handled the
    /// original already, read it and acknowledge it without running their
    /// handler ([`WorkerSnapshot::skipped_replays`](crate::WorkerSnapshot::skipped_replays)).
    /// Dead letters without a payload stay (and are counted as skipped). The
    /// stream is not trimmed by a replay.
    ///
    /// A replay whose connection breaks after the server ran it is sent again
    /// by fred and runs twice: up to `2 × count` dead letters are replayed,
    /// each of them once (the report counts the second run only).
    ///
    /// # Errors
    ///
    /// Connection errors, script errors.
    pub async fn replay_dead_letters(&self, count: u64) -> Result<ReplayReport> {
        let span = tracing::info_span!("fredkit.streams.replay", stream = %self.keys.name(), count);
        self.replay(count).instrument(span).await
    }

    async fn replay(&self, count: u64) -> Result<ReplayReport> {
        let v: Value = REPLAY
            .exec(
                self.redis.client(),
                vec![self.keys.dead_letter(), self.keys.stream()],
                vec![count.to_string(), "0".to_string()],
            )
            .await?;
        let mut parts = reply::array(v)?.into_iter();
        let replayed = parts.next().as_ref().and_then(int).unwrap_or(0).max(0) as u64;
        let skipped = parts.next().as_ref().and_then(int).unwrap_or(0).max(0) as u64;
        let mut new_ids = Vec::new();
        if let Some(ids) = parts.next() {
            for id in reply::array(ids)? {
                if let Some(id) = text(&id) {
                    new_ids.push(StreamId::new(id));
                }
            }
        }
        tracing::info!(stream = %self.keys.name(), replayed, skipped, "dead letters replayed");
        Ok(ReplayReport {
            replayed,
            skipped,
            new_ids,
        })
    }
}

pub(crate) async fn create_group(
    redis: &Redis,
    keys: &StreamKeys,
    group: &str,
    start: &StartFrom,
) -> Result<bool> {
    if group.is_empty() {
        return Err(Error::invalid_input("consumer group name is empty"));
    }
    let id = XID::from(start.id());
    match redis
        .client()
        .xgroup_create::<Value, _, _, _>(keys.stream(), group, id, true)
        .await
    {
        Ok(_) => Ok(true),
        Err(e) if e.details().starts_with("BUSYGROUP") => Ok(false),
        Err(e) => Err(e.into()),
    }
}
