//! The admin API: [`FlagAdmin`] writes flags (validated, compare-and-set on
//! the revision, audited, published) and reads them back.

use std::time::Duration;

use fred::interfaces::{HashesInterface, StreamsInterface};
use fred::types::Value;
use fredkit_conn::Redis;
use fredkit_core::Script;
use fredkit_core::{Error, ErrorKind, IntoKeySpace, Result};
use serde::Serialize;

use crate::keys::Keys;
use crate::metrics::AdminCounters;
use crate::model::{parse_record, validate_name, FlagDef, StoredFlag};

pub(crate) static WRITE: Script = Script::new("flags_write", include_str!("../scripts/write.lua"));

/// Longest expiry accepted: 10 years.
pub const MAX_EXPIRY: Duration = Duration::from_secs(10 * 366 * 86_400);

/// An error of the admin API: a typed conflict, an unknown flag, an invalid
/// field, or a Redis error.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AdminError {
    /// Someone else wrote the flag since the revision this write expected:
    /// nothing was written. Read the flag again, reapply the change, retry.
    #[error("flag '{flag}' was changed concurrently: this write expected {}, found {}; nothing was written: read it again and retry", describe(Some(*.expected)), describe(*.actual))]
    Conflict {
        /// The flag.
        flag: String,
        /// The revision the write expected (0 = absent).
        expected: u64,
        /// The revision found (`None`: a malformed record, which only a
        /// write with [`Expect::Any`] replaces; `Some(0)`: absent).
        actual: Option<u64>,
    },
    /// An update or delete named a flag that does not exist.
    #[error("flag '{flag}' does not exist; create it first (set)")]
    UnknownFlag {
        /// The flag.
        flag: String,
    },
    /// An argument is invalid; `field` names it (`name`, `percent`,
    /// `allow_users`, `variants`, `expire_in`, `by`...). Nothing was written.
    #[error("invalid {field}: {reason}")]
    Invalid {
        /// The field.
        field: &'static str,
        /// What is wrong with it and what is allowed.
        reason: String,
    },
    /// Redis failed (unreachable, timeout, permission...): the write may or
    /// may not have been applied if the failure came after sending it; read
    /// the flag to find out.
    #[error(transparent)]
    Redis(#[from] Error),
}

fn describe(rev: Option<u64>) -> String {
    match rev {
        None => "a malformed record".to_string(),
        Some(0) => "no flag".to_string(),
        Some(n) => format!("revision {n}"),
    }
}

impl AdminError {
    pub(crate) fn invalid(field: &'static str, reason: impl Into<String>) -> AdminError {
        AdminError::Invalid {
            field,
            reason: reason.into(),
        }
    }

    /// The [`ErrorKind`] closest to this error: `InvalidInput` for
    /// `Invalid` and `UnknownFlag`, `Busy` for a conflict (retry after
    /// reading again), the Redis error's kind otherwise.
    pub fn kind(&self) -> ErrorKind {
        match self {
            AdminError::Conflict { .. } => ErrorKind::Busy,
            AdminError::UnknownFlag { .. } | AdminError::Invalid { .. } => ErrorKind::InvalidInput,
            AdminError::Redis(e) => e.kind(),
        }
    }

    /// Whether this is a [`Conflict`](AdminError::Conflict).
    pub fn is_conflict(&self) -> bool {
        matches!(self, AdminError::Conflict { .. })
    }
}

/// What a write expects to find (its compare-and-set condition).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Expect {
    /// Anything: the write replaces whatever is there (last writer wins).
    #[default]
    Any,
    /// No flag of that name: the write only creates.
    Absent,
    /// Exactly this revision ([`StoredFlag::rev`]): the write is lost to
    /// nobody, a concurrent writer gets [`AdminError::Conflict`].
    Rev(u64),
}

/// What a write does to the flag's expiry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Expiry {
    /// Keep the stored expiry (none for a new flag).
    #[default]
    Keep,
    /// No expiry.
    Never,
    /// Revert to the default from code this long after the write, by the
    /// server's clock (at most 10 years).
    In(Duration),
}

/// Options of one write: the author (for the audit trail), the
/// compare-and-set condition and the expiry.
///
/// ```
/// use std::time::Duration;
/// use fredkit_flags::{Expect, Write};
/// let w = Write::by("alice")                       // who, kept in the audit trail
///     .expect(Expect::Rev(3))                       // only over revision 3
///     .expire_in(Duration::from_secs(7 * 86_400));  // reverts in 7 days (server clock)
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[must_use]
pub struct Write {
    by: String,
    expect: Expect,
    expiry: Expiry,
}

impl Write {
    /// A write by `author` (1 to 256 bytes), expecting [`Expect::Any`],
    /// keeping the expiry.
    pub fn by(author: impl Into<String>) -> Write {
        Write {
            by: author.into(),
            expect: Expect::Any,
            expiry: Expiry::Keep,
        }
    }

    /// The compare-and-set condition. Default [`Expect::Any`].
    pub fn expect(mut self, expect: Expect) -> Write {
        self.expect = expect;
        self
    }

    /// The expiry. Default [`Expiry::Keep`].
    pub fn expiry(mut self, expiry: Expiry) -> Write {
        self.expiry = expiry;
        self
    }

    /// Shorthand for `expiry(Expiry::In(d))`.
    pub fn expire_in(self, d: Duration) -> Write {
        self.expiry(Expiry::In(d))
    }
}

/// What a successful write did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Written {
    /// The flag's new revision (0 for a delete).
    pub rev: u64,
    /// The namespace version after the write: an instance whose
    /// [`Flags::version`](crate::Flags::version) reached it has applied it.
    pub version: u64,
}

/// One entry of the audit trail ([`FlagAdmin::audit`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct AuditEntry {
    /// The stream entry id (`ms-seq`).
    pub id: String,
    /// `set`, `update` or `delete`.
    pub op: String,
    /// The flag.
    pub flag: String,
    /// Who wrote it.
    pub by: String,
    /// When (Unix ms, server clock).
    pub at: u64,
    /// The namespace version the write produced.
    pub version: u64,
    /// The record before (raw JSON; empty when there was none).
    pub old: String,
    /// The record after (raw JSON; empty for a delete).
    pub new: String,
}

/// The admin side of a namespace: writes flags and reads them from Redis.
/// Every write is one script (one round trip) that checks the revision,
/// writes the record, bumps the namespace version, appends to the audit
/// stream (capped, `MAXLEN ~`) and publishes the change — so every
/// [`Flags`](crate::Flags) instance applies it, usually within
/// milliseconds.
///
/// ```no_run
/// use fredkit_flags::{Expect, FlagAdmin, FlagDef, Write};
/// # async fn run(redis: fredkit_conn::Redis) -> Result<(), fredkit_flags::AdminError> {
/// let admin = FlagAdmin::new(&redis, "shop:flags")?;
/// let w = admin.set("new-checkout", &FlagDef::on().percent(20.0), &Write::by("alice")).await?;
/// // Raise to 30 % only if nobody changed it meanwhile.
/// admin.set("new-checkout", &FlagDef::on().percent(30.0),
///           &Write::by("alice").expect(Expect::Rev(w.rev))).await?;
/// # Ok(()) }
/// ```
#[derive(Clone, Debug)]
pub struct FlagAdmin {
    redis: Redis,
    keys: Keys,
    audit_len: u64,
    counters: AdminCounters,
}

impl FlagAdmin {
    /// The admin API of the namespace `keys` (the same prefix the
    /// [`Flags`](crate::Flags) instances use). Keeps about 10 000 audit
    /// entries. Makes no round trip.
    ///
    /// # Errors
    /// [`ErrorKind::InvalidInput`] for a prefix [`KeySpace`](crate::KeySpace) rejects.
    pub fn new(redis: &Redis, keys: impl IntoKeySpace) -> Result<FlagAdmin> {
        let keys = Keys::new(redis, keys.into_key_space()?)?;
        let counters = AdminCounters::new(keys.space.prefix());
        Ok(FlagAdmin {
            redis: redis.clone(),
            keys,
            audit_len: 10_000,
            counters,
        })
    }

    /// Keeps about `n` audit entries (`XADD MAXLEN ~ n`; at least 1).
    /// Default 10 000.
    #[must_use]
    pub fn audit_len(mut self, n: u64) -> FlagAdmin {
        self.audit_len = n.max(1);
        self
    }

    /// Creates or replaces `name` with `def` under `write`'s condition.
    ///
    /// One round trip (the write script). Instances apply it when its change
    /// message arrives (or, if that is lost, at their next gap or sync).
    ///
    /// Cancellation: dropped after sending, the write may have happened;
    /// a lost reply is retried by fred and recognised by the script (the
    /// write id), so a retry never turns a success into a conflict.
    ///
    /// # Errors
    /// [`AdminError::Invalid`] naming the field (nothing sent),
    /// [`AdminError::Conflict`] when the condition fails,
    /// [`AdminError::Redis`].
    pub async fn set(
        &self,
        name: &str,
        def: &FlagDef,
        write: &Write,
    ) -> Result<Written, AdminError> {
        self.write("set", name, Some(def), write).await
    }

    /// Replaces an existing flag: like [`set`](Self::set), but an absent
    /// flag is [`AdminError::UnknownFlag`].
    ///
    /// # Errors
    /// As [`set`](Self::set), plus [`AdminError::UnknownFlag`].
    pub async fn update(
        &self,
        name: &str,
        def: &FlagDef,
        write: &Write,
    ) -> Result<Written, AdminError> {
        self.write("update", name, Some(def), write).await
    }

    /// Reads `name`, applies `change` to its definition and writes it back
    /// only if nobody wrote it meanwhile ([`Expect::Rev`] of what was read;
    /// `write`'s own condition is ignored). Two round trips.
    ///
    /// # Errors
    /// [`AdminError::UnknownFlag`] when it does not exist (or its record is
    /// malformed: replace it with [`set`](Self::set)),
    /// [`AdminError::Conflict`] when someone wrote it between the read and
    /// the write, the errors of [`set`](Self::set).
    pub async fn modify(
        &self,
        name: &str,
        write: &Write,
        change: impl FnOnce(&mut FlagDef),
    ) -> Result<Written, AdminError> {
        let current = self
            .get(name)
            .await?
            .ok_or_else(|| AdminError::UnknownFlag {
                flag: name.to_string(),
            })?;
        let mut def = current.def;
        change(&mut def);
        let write = write.clone().expect(Expect::Rev(current.rev));
        self.write("update", name, Some(&def), &write).await
    }

    /// Deletes `name` (instances then answer its default from code).
    /// One round trip.
    ///
    /// A delete whose reply was lost and which fred sent again finds the
    /// flag gone and reports [`AdminError::UnknownFlag`]: the flag is
    /// deleted either way (a set or update in the same case answers
    /// success, recognised by its write id).
    ///
    /// # Errors
    /// [`AdminError::UnknownFlag`] when it does not exist, the errors of
    /// [`set`](Self::set).
    pub async fn delete(&self, name: &str, write: &Write) -> Result<Written, AdminError> {
        self.write("delete", name, None, write).await
    }

    async fn write(
        &self,
        op: &'static str,
        name: &str,
        def: Option<&FlagDef>,
        write: &Write,
    ) -> Result<Written, AdminError> {
        let result = self.write_inner(op, name, def, write).await;
        self.counters.count(&result);
        result
    }

    async fn write_inner(
        &self,
        op: &'static str,
        name: &str,
        def: Option<&FlagDef>,
        write: &Write,
    ) -> Result<Written, AdminError> {
        validate_name(name)?;
        if write.by.is_empty() || write.by.len() > crate::model::MAX_ID_LEN {
            return Err(AdminError::invalid(
                "by",
                "the author must be 1 to 256 bytes",
            ));
        }
        let def_json = match def {
            Some(def) => {
                def.validate()?;
                let json = serde_json::to_string(def)
                    .map_err(|e| AdminError::invalid("def", e.to_string()))?;
                if json.len() > crate::model::MAX_DEF_BYTES {
                    return Err(AdminError::invalid(
                        "def",
                        format!("encodes to {} bytes, at most 4 MiB", json.len()),
                    ));
                }
                json
            }
            None => String::new(),
        };
        let expiry = match write.expiry {
            Expiry::Keep => "keep".to_string(),
            Expiry::Never => "never".to_string(),
            Expiry::In(d) => {
                if d.is_zero() || d > MAX_EXPIRY {
                    return Err(AdminError::invalid(
                        "expire_in",
                        format!("must be between 1 ms and 10 years, got {d:?}"),
                    ));
                }
                d.as_millis().max(1).to_string()
            }
        };
        let expected = match write.expect {
            Expect::Any => String::new(),
            Expect::Absent => "0".to_string(),
            Expect::Rev(n) => n.to_string(),
        };
        let by = serde_json::to_string(&write.by)
            .map_err(|e| AdminError::invalid("by", e.to_string()))?;
        let wid = format!(
            "{:016x}{:016x}",
            rand::random::<u64>(),
            rand::random::<u64>()
        );
        let keys = vec![
            self.keys.flags.clone(),
            self.keys.version.clone(),
            self.keys.audit.clone(),
        ];
        let args = vec![
            op.to_string(),
            name.to_string(),
            expected,
            wid,
            def_json,
            expiry,
            by,
            self.audit_len.to_string(),
            self.keys.channel.clone(),
            if self.keys.sharded { "1" } else { "0" }.to_string(),
        ];
        let reply: Vec<Value> = WRITE
            .exec(self.redis.client(), keys, args)
            .await
            .map_err(|e| e.naming("EVALSHA flags_write", &self.keys.flags))?;
        let status = reply.first().and_then(Value::as_string).unwrap_or_default();
        let int = |i: usize| reply.get(i).and_then(Value::as_i64).unwrap_or(0);
        match status.as_str() {
            "ok" => Ok(Written {
                rev: u64::try_from(int(2)).unwrap_or(0),
                version: u64::try_from(int(1)).unwrap_or(0),
            }),
            "missing" => Err(AdminError::UnknownFlag {
                flag: name.to_string(),
            }),
            "conflict" => Err(AdminError::Conflict {
                flag: name.to_string(),
                expected: match write.expect {
                    Expect::Rev(n) => n,
                    _ => 0,
                },
                actual: u64::try_from(int(3)).ok(),
            }),
            other => Err(AdminError::Redis(Error::protocol(format!(
                "flags_write on {} answered {other:?}",
                self.keys.flags
            )))),
        }
    }

    /// The flag `name` as stored, or `None`. One round trip (`HGET`).
    ///
    /// # Errors
    /// [`AdminError::Invalid`] for a bad name; [`AdminError::Redis`],
    /// including a [`Protocol`](ErrorKind::Protocol) error naming the flag
    /// when its record is malformed.
    pub async fn get(&self, name: &str) -> Result<Option<StoredFlag>, AdminError> {
        validate_name(name)?;
        let raw: Option<Vec<u8>> = self
            .redis
            .client()
            .hget(&self.keys.flags, name)
            .await
            .map_err(|e| Error::from(e).naming("HGET", &self.keys.flags))?;
        match raw {
            None => Ok(None),
            Some(raw) => parse_record(name, &raw).map(Some).map_err(|why| {
                AdminError::Redis(Error::protocol(format!(
                    "the record of flag '{name}' in {} is malformed ({why}); replace it with set",
                    self.keys.flags
                )))
            }),
        }
    }

    /// Every flag of the namespace, sorted by name; malformed records are
    /// skipped with a warning. One round trip (`HGETALL`).
    ///
    /// # Errors
    /// [`AdminError::Redis`].
    pub async fn list(&self) -> Result<Vec<StoredFlag>, AdminError> {
        let all: Vec<(String, Vec<u8>)> = self
            .redis
            .client()
            .hgetall::<std::collections::HashMap<String, Vec<u8>>, _>(&self.keys.flags)
            .await
            .map_err(|e| Error::from(e).naming("HGETALL", &self.keys.flags))?
            .into_iter()
            .collect();
        let mut out: Vec<StoredFlag> = all
            .into_iter()
            .filter_map(|(name, raw)| match parse_record(&name, &raw) {
                Ok(f) => Some(f),
                Err(why) => {
                    tracing::warn!(flag = %name, error = %why, "fredkit-flags: malformed flag record skipped");
                    None
                }
            })
            .collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    /// The newest `count` audit entries, newest first. One round trip
    /// (`XREVRANGE`).
    ///
    /// # Errors
    /// [`AdminError::Redis`].
    pub async fn audit(&self, count: u64) -> Result<Vec<AuditEntry>, AdminError> {
        let entries: Vec<(String, std::collections::HashMap<String, String>)> = self
            .redis
            .client()
            .xrevrange(&self.keys.audit, "+", "-", Some(count))
            .await
            .map_err(|e| Error::from(e).naming("XREVRANGE", &self.keys.audit))?;
        Ok(entries
            .into_iter()
            .map(|(id, mut f)| {
                let mut take = |k: &str| f.remove(k).unwrap_or_default();
                let by_json = take("by");
                AuditEntry {
                    id,
                    op: take("op"),
                    flag: take("flag"),
                    by: serde_json::from_str::<String>(&by_json).unwrap_or(by_json),
                    at: take("at").parse().unwrap_or(0),
                    version: take("version").parse().unwrap_or(0),
                    old: take("old"),
                    new: take("new"),
                }
            })
            .collect())
    }

    /// The key space.
    pub fn keys(&self) -> &crate::KeySpace {
        &self.keys.space
    }
}
