//! Lua scripts run by SHA1 with a transparent NOSCRIPT fallback: [`Script`].

use std::{fmt, sync::OnceLock};

use fred::{
    bytes_utils::Str,
    clients::Pipeline,
    interfaces::{ClientLike, FredResult, LuaInterface},
    types::{ClusterHash, CustomCommand, FromValue, Key, MultipleKeys, MultipleValues, Value},
};
use tracing::Instrument;

use crate::{Error, ErrorKind, Result};

/// A Lua script, identified by its SHA1, run with `EVALSHA` and re-sent with
/// `EVAL` when the server answers `NOSCRIPT`.
///
/// Scripts live in `scripts/*.lua` files and are embedded with
/// `include_str!`; [`Script::new`] is a `const fn`, so a script is a `static`
/// and its SHA1 is computed once, on first use.
///
/// # Round trips
///
/// | call | normally | after `SCRIPT FLUSH`, a restart or a failover |
/// |---|---|---|
/// | [`exec`](Self::exec) | 1 (`EVALSHA`) | 2 (`EVALSHA` → `NOSCRIPT`, then `EVAL`) |
/// | [`exec_pipelined`](Self::exec_pipelined) with N calls | 1 (one pipeline) | 2 (the `NOSCRIPT` calls again, as one pipeline of `EVAL`s) |
/// | [`load`](Self::load) | 1 per primary, concurrently | — |
///
/// A `NOSCRIPT` reply means the script did not run, so the fallback never
/// runs a script twice. `EVAL` also caches the script on the node that ran
/// it, so the next `EVALSHA` there costs one round trip again.
///
/// # Cluster
///
/// Every node has its own script cache. `EVALSHA` and its `EVAL` retry are
/// routed by the same keys, so they reach the same node and the retry caches
/// the script exactly where it was missing. All keys of one call must be in
/// one slot (use [`KeySpace::tagged`](crate::KeySpace::tagged)). A call with
/// no keys goes to a random node; such scripts should be
/// [`load`](Self::load)ed on every primary at start-up.
///
/// # Errors
///
/// Errors the script raises (`redis.error_reply`, a failing `redis.call`, a
/// syntax error) become [`Error::Script`] carrying the script's name and
/// Redis's message. Connection problems, timeouts and `BUSY` keep their kinds
/// ([`ErrorKind::Connection`], [`ErrorKind::Timeout`], [`ErrorKind::Busy`]).
/// An ACL refusal (`NOPERM`, of the `EVALSHA` itself or of a command or key
/// inside the script) is [`ErrorKind::Permission`], naming the script, the
/// commands it calls and the call's keys (Redis 7.0 names neither).
/// A reply that does not convert into the requested type is
/// [`ErrorKind::Protocol`].
///
/// # Example
///
/// ```no_run
/// use fred::prelude::*;
/// use fredkit_core::Script;
///
/// // In real code: Script::new("incr_by", include_str!("../scripts/incr_by.lua"))
/// static INCR_BY: Script = Script::new(
///     "incr_by",
///     "return redis.call('INCRBY', KEYS[1], ARGV[1])",
/// );
///
/// # async fn run(client: &Client) -> Result<(), fredkit_core::Error> {
/// let n: i64 = INCR_BY.exec(client, "counter", 5).await?;
///
/// // A batch in one round trip; each call gets its own result.
/// let results: Vec<fredkit_core::Result<i64>> = INCR_BY
///     .exec_pipelined(client, vec![("a", 1), ("b", 2)])
///     .await;
/// # Ok(())
/// # }
/// ```
pub struct Script {
    name: &'static str,
    source: &'static str,
    sha1: OnceLock<Str>,
}

impl Script {
    /// A script named `name` (shown in errors and traces) with Lua `source`.
    pub const fn new(name: &'static str, source: &'static str) -> Script {
        Script {
            name,
            source,
            sha1: OnceLock::new(),
        }
    }

    /// The script's name.
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// The Lua source.
    pub fn source(&self) -> &'static str {
        self.source
    }

    /// The SHA1 of the source as 40 lowercase hex digits, as `SCRIPT LOAD`
    /// returns it.
    pub fn sha1(&self) -> &str {
        self.sha1_str()
    }

    fn sha1_str(&self) -> &Str {
        self.sha1
            .get_or_init(|| Str::from(fred::util::sha1_hash(self.source)))
    }

    /// Runs the script with `EVALSHA`, falling back to `EVAL` on `NOSCRIPT`.
    ///
    /// `keys` and `args` take anything fred accepts for `EVALSHA`: a single
    /// value, a `Vec`, an array, or `()` for none.
    ///
    /// Cancellation: if the future is dropped, the script may have run once
    /// (its reply is lost), or not at all; dropping never makes it run twice.
    ///
    /// Retries: when the connection breaks after the command was written,
    /// fred (as fredkit-conn configures it) sends it again on the new
    /// connection, up to 3 attempts in all. If the server had already run it,
    /// it runs again: a script that is not idempotent must tolerate that
    /// (fred 10.1 offers no per-command attempt limit for `EVALSHA`).
    ///
    /// # Errors
    ///
    /// See the [type docs](Script#errors); an argument fred cannot convert is
    /// [`ErrorKind::InvalidInput`].
    pub async fn exec<C, R, K, V>(&self, client: &C, keys: K, args: V) -> Result<R>
    where
        C: LuaInterface,
        R: FromValue,
        K: Into<MultipleKeys> + Send,
        V: TryInto<MultipleValues> + Send,
        V::Error: Into<fred::error::Error> + Send,
    {
        let keys: MultipleKeys = keys.into();
        let args = self.convert_args(args)?;
        let span = tracing::debug_span!(
            "fredkit.script",
            script = self.name,
            outcome = tracing::field::Empty
        );
        async move {
            let mut retried = false;
            let reply = match client
                .evalsha::<Value, _, _, _>(self.sha1_str().clone(), keys.clone(), args.clone())
                .await
            {
                Err(e) if is_noscript(&e) => {
                    tracing::debug!(script = self.name, "NOSCRIPT: sending the source with EVAL");
                    retried = true;
                    client
                        .eval::<Value, _, _, _>(
                            fred::util::static_str(self.source),
                            keys.clone(),
                            args,
                        )
                        .await
                }
                reply => reply,
            };
            let result = reply
                .map_err(|e| self.error_on(e, key_names(&keys)))
                .and_then(|v| self.convert(v));
            let span = tracing::Span::current();
            match &result {
                Ok(_) if retried => span.record("outcome", "ok_after_noscript"),
                Ok(_) => span.record("outcome", "ok"),
                Err(e) => span.record("outcome", tracing::field::debug(e.kind())),
            };
            result
        }
        .instrument(span)
        .await
    }

    /// Runs the script once per call in `calls` — each a `(keys, args)` pair —
    /// as one pipeline of `EVALSHA`s, then re-runs only the calls answered
    /// with `NOSCRIPT` as one pipeline of `EVAL`s.
    ///
    /// Returns one result per call, in order. A call whose arguments cannot be
    /// converted fails alone; if the pipeline as a whole fails (connection
    /// lost, timeout), every call not yet answered carries that error.
    ///
    /// The calls run in order per node, but not atomically: other clients'
    /// commands may run between them. Each call's keys must share a slot; the
    /// calls of a batch may use any slots (on a cluster fred sends each to its
    /// node).
    ///
    /// Cancellation: if the future is dropped, any subset of the calls may
    /// have run (on a cluster each node runs its share in order), each at
    /// most once.
    pub async fn exec_pipelined<C, R, I, K, V>(&self, client: &C, calls: I) -> Vec<Result<R>>
    where
        C: ClientLike,
        R: FromValue,
        I: IntoIterator<Item = (K, V)>,
        K: Into<MultipleKeys>,
        V: TryInto<MultipleValues>,
        V::Error: Into<fred::error::Error>,
    {
        let prepared: Vec<Result<Call>> = calls
            .into_iter()
            .map(|(keys, args)| self.prepare(keys.into(), args))
            .collect();
        let span = tracing::debug_span!(
            "fredkit.script.pipeline",
            script = self.name,
            calls = prepared.len(),
            noscript = tracing::field::Empty,
            failed = tracing::field::Empty
        );
        async move {
            let mut replies: Vec<Option<FredResult<Value>>> =
                prepared.iter().map(|_| None).collect();

            let first: Vec<usize> = (0..prepared.len())
                .filter(|i| prepared[*i].is_ok())
                .collect();
            let sha = Value::String(self.sha1_str().clone());
            self.run_pipeline(client, "EVALSHA", sha, &prepared, &first, &mut replies)
                .await;

            let noscript: Vec<usize> = first
                .into_iter()
                .filter(|i| matches!(&replies[*i], Some(Err(e)) if is_noscript(e)))
                .collect();
            tracing::Span::current().record("noscript", noscript.len());
            if !noscript.is_empty() {
                tracing::debug!(
                    script = self.name,
                    calls = noscript.len(),
                    "NOSCRIPT: re-sending the source with EVAL"
                );
                let source = Value::String(fred::util::static_str(self.source));
                self.run_pipeline(client, "EVAL", source, &prepared, &noscript, &mut replies)
                    .await;
            }

            let results: Vec<Result<R>> = prepared
                .into_iter()
                .zip(replies)
                .map(|(call, reply)| {
                    let call = call?;
                    match reply {
                        Some(Ok(value)) => self.convert(value),
                        Some(Err(e)) => Err(self.error_on(e, call.key_names())),
                        None => Err(Error::protocol(format!(
                            "script '{}': no reply for a pipelined call",
                            self.name
                        ))),
                    }
                })
                .collect();
            let failed = results.iter().filter(|r| r.is_err()).count();
            tracing::Span::current().record("failed", failed);
            results
        }
        .instrument(span)
        .await
    }

    /// Loads the script into the script cache of every primary (`SCRIPT LOAD`
    /// on each, concurrently; on a single server, once). Optional: `exec`
    /// loads on demand. Useful at start-up for scripts called without keys,
    /// which go to a random node.
    ///
    /// # Errors
    ///
    /// [`Error::Script`] when a node rejects the script (a syntax error);
    /// connection errors as usual.
    pub async fn load<C: LuaInterface>(&self, client: &C) -> Result<()> {
        let sha: String = client
            .script_load_cluster(fred::util::static_str(self.source))
            .await
            .map_err(|e| self.error(e))?;
        if !sha.eq_ignore_ascii_case(self.sha1()) {
            return Err(Error::protocol(format!(
                "script '{}': SCRIPT LOAD returned SHA1 {sha}, expected {}",
                self.name,
                self.sha1()
            )));
        }
        Ok(())
    }

    /// [`load`](Self::load)s every script in `scripts`, concurrently.
    ///
    /// # Errors
    ///
    /// The first error of any script.
    pub async fn load_all<C: LuaInterface>(client: &C, scripts: &[&Script]) -> Result<()> {
        futures::future::try_join_all(scripts.iter().map(|s| s.load(client))).await?;
        Ok(())
    }

    /// Queues `EVALSHA`/`EVAL` (`command`, with `head` as its first argument)
    /// for the calls at `indices` in one pipeline and stores their replies.
    async fn run_pipeline<C: ClientLike>(
        &self,
        client: &C,
        command: &'static str,
        head: Value,
        prepared: &[Result<Call>],
        indices: &[usize],
        replies: &mut [Option<FredResult<Value>>],
    ) {
        if indices.is_empty() {
            return;
        }
        let pipeline = Pipeline::from(client.clone());
        let mut queued = Vec::with_capacity(indices.len());
        for &i in indices {
            let Some(Ok(call)) = prepared.get(i) else {
                continue;
            };
            let mut args = Vec::with_capacity(call.body.len() + 1);
            args.push(head.clone());
            args.extend(call.body.iter().cloned());
            let cmd = CustomCommand::new_static(command, call.hasher.clone(), false);
            match pipeline.custom::<(), Value>(cmd, args).await {
                Ok(()) => queued.push(i),
                Err(e) => replies[i] = Some(Err(e)),
            }
        }
        if queued.is_empty() {
            return;
        }
        let results = pipeline.try_all::<Value>().await;
        if results.len() == queued.len() {
            for (i, result) in queued.into_iter().zip(results) {
                replies[i] = Some(result);
            }
        } else {
            // The pipeline failed as a whole: fred returns one error.
            let error = results
                .into_iter()
                .find_map(|r| r.err())
                .unwrap_or_else(|| {
                    fred::error::Error::new(
                        fred::error::ErrorKind::Protocol,
                        "pipeline returned the wrong number of replies",
                    )
                });
            for i in queued {
                replies[i] = Some(Err(error.clone()));
            }
        }
    }

    fn prepare<V>(&self, keys: MultipleKeys, args: V) -> Result<Call>
    where
        V: TryInto<MultipleValues>,
        V::Error: Into<fred::error::Error>,
    {
        let args = self.convert_args(args)?;
        let keys: Vec<Key> = keys.inner();
        let hasher = match keys.first() {
            Some(key) => ClusterHash::Custom(fred::util::redis_keyslot(key.as_bytes())),
            None => ClusterHash::Random,
        };
        let args = flatten(args);
        let mut body = Vec::with_capacity(1 + keys.len() + args.len());
        body.push(Value::Integer(
            i64::try_from(keys.len()).unwrap_or(i64::MAX),
        ));
        body.extend(keys.into_iter().map(Value::from));
        body.extend(args);
        Ok(Call { hasher, body })
    }

    fn convert_args<V>(&self, args: V) -> Result<Value>
    where
        V: TryInto<MultipleValues>,
        V::Error: Into<fred::error::Error>,
    {
        args.try_into().map_err(|e| {
            let e: fred::error::Error = e.into();
            Error::invalid_input(format!(
                "script '{}': argument cannot be sent to Redis: {}",
                self.name,
                e.details()
            ))
        })
    }

    fn convert<R: FromValue>(&self, value: Value) -> Result<R> {
        let kind = value.kind();
        value.convert().map_err(|e| Error::Protocol {
            message: format!(
                "script '{}' returned {kind}, which does not convert into the requested type: {}",
                self.name,
                e.details()
            ),
            source: Some(e),
        })
    }

    /// Maps a fred error from running this script.
    fn error(&self, e: fred::error::Error) -> Error {
        self.error_on(e, None)
    }

    /// Maps a fred error from running this script on `keys` (their names,
    /// joined, when known). An ACL refusal names the script, the commands it
    /// calls and the keys: Redis 7.0 names neither the key nor, inside a
    /// script, the command.
    fn error_on(&self, e: fred::error::Error, keys: Option<String>) -> Error {
        let mapped = Error::from(e);
        if let Error::Permission {
            command,
            key,
            message,
            source,
        } = mapped
        {
            let calls = commands_called(self.source);
            let command = match command {
                Some(command) => format!("{command} (in script '{}')", self.name),
                None if calls.is_empty() => format!("EVALSHA of script '{}'", self.name),
                None => format!(
                    "EVALSHA of script '{}' (which calls {})",
                    self.name,
                    calls.join(", ")
                ),
            };
            return Error::Permission {
                command: Some(command),
                key: key.or(keys),
                message,
                source,
            };
        }
        match mapped.kind() {
            ErrorKind::Connection | ErrorKind::Timeout | ErrorKind::Busy | ErrorKind::Config => {
                mapped
            }
            _ => match mapped {
                Error::Script {
                    message, source, ..
                }
                | Error::Protocol { message, source } => Error::Script {
                    script: self.name,
                    message,
                    source,
                },
                other => Error::Script {
                    script: self.name,
                    message: other.to_string(),
                    source: None,
                },
            },
        }
    }
}

impl fmt::Debug for Script {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Script")
            .field("name", &self.name)
            .field("sha1", &self.sha1())
            .finish_non_exhaustive()
    }
}

impl Clone for Script {
    fn clone(&self) -> Self {
        Script {
            name: self.name,
            source: self.source,
            sha1: self.sha1.clone(),
        }
    }
}

/// One prepared call of a pipelined script: its routing and
/// `numkeys, keys…, args…`.
struct Call {
    hasher: ClusterHash,
    body: Vec<Value>,
}

impl Call {
    /// The call's keys, joined with `, `, for an error message.
    fn key_names(&self) -> Option<String> {
        let count = match self.body.first() {
            Some(Value::Integer(n)) => usize::try_from(*n).unwrap_or(0),
            _ => 0,
        };
        let names: Vec<String> = self
            .body
            .iter()
            .skip(1)
            .take(count)
            .filter_map(|v| v.as_string())
            .collect();
        (!names.is_empty()).then(|| names.join(", "))
    }
}

/// The keys of a call, joined with `, `, for an error message.
fn key_names(keys: &MultipleKeys) -> Option<String> {
    // Only on the error path: the clone costs nothing on success.
    let names: Vec<String> = keys
        .clone()
        .inner()
        .iter()
        .map(|k| String::from_utf8_lossy(k.as_bytes()).into_owned())
        .collect();
    (!names.is_empty()).then(|| names.join(", "))
}

/// The Redis commands a Lua source calls (`redis.call('SET', ...)`,
/// `redis.pcall("hget", ...)`), upper-cased, deduplicated, in order.
fn commands_called(source: &str) -> Vec<String> {
    let mut found: Vec<String> = Vec::new();
    for marker in ["redis.call(", "redis.pcall("] {
        for rest in source.split(marker).skip(1) {
            let rest = rest.trim_start();
            let Some(quote) = rest.chars().next().filter(|c| *c == '\'' || *c == '"') else {
                continue;
            };
            let name: String = rest[1..].chars().take_while(|c| *c != quote).collect();
            let name = name.to_ascii_uppercase();
            if !name.is_empty() && !found.contains(&name) {
                found.push(name);
            }
        }
    }
    found
}

/// The arguments as a flat list, as `EVALSHA` sends them.
fn flatten(args: Value) -> Vec<Value> {
    match args {
        Value::Null => Vec::new(),
        Value::Array(values) => values,
        Value::Map(map) => map
            .inner()
            .into_iter()
            .flat_map(|(k, v)| [Value::from(k), v])
            .collect(),
        other => vec![other],
    }
}

fn is_noscript(e: &fred::error::Error) -> bool {
    e.details().starts_with("NOSCRIPT")
}

#[cfg(test)]
mod tests {
    use super::*;

    static ECHO: Script = Script::new("echo", "return ARGV[1]");

    #[test]
    fn sha1_matches_redis_script_load() {
        // From fred's own docs: SCRIPT LOAD "return ARGV[1]".
        assert_eq!(ECHO.sha1(), "098e0f0d1448c0a81dafe820f66d460eb09263da");
        assert_eq!(ECHO.clone().sha1(), ECHO.sha1());
    }

    #[test]
    fn debug_shows_name_and_sha_but_not_the_source() {
        let s = format!("{ECHO:?}");
        assert!(s.contains("echo") && s.contains("098e0f0d"), "{s}");
        assert!(!s.contains("ARGV"), "{s}");
    }

    #[test]
    fn prepared_call_routes_by_first_key_and_counts_keys() {
        let call = ECHO
            .prepare(MultipleKeys::from(vec!["{u1}:a", "{u1}:b"]), vec![1, 2, 3])
            .unwrap();
        assert_eq!(
            call.hasher,
            ClusterHash::Custom(fred::util::redis_keyslot(b"u1"))
        );
        assert_eq!(call.body.len(), 1 + 2 + 3);
        assert_eq!(call.body[0], Value::Integer(2));

        let keyless = ECHO.prepare(MultipleKeys::from(()), ()).unwrap();
        assert_eq!(keyless.hasher, ClusterHash::Random);
        assert_eq!(keyless.body, vec![Value::Integer(0)]);
    }

    #[rstest::rstest]
    #[case::redis_error_reply("my message", ErrorKind::Script)]
    #[case::runtime_error(
        "ERR user_script:1: Script attempted to access nonexistent global variable 'x'",
        ErrorKind::Script
    )]
    #[case::wrongtype_inside_script("WRONGTYPE Operation against a key", ErrorKind::Script)]
    #[case::busy("BUSY Redis is busy running a script", ErrorKind::Busy)]
    fn server_errors_name_the_script(#[case] details: &str, #[case] kind: ErrorKind) {
        let e = ECHO.error(fred::error::Error::new(
            fred::error::ErrorKind::Unknown,
            details.to_string(),
        ));
        assert_eq!(e.kind(), kind);
        if kind == ErrorKind::Script {
            assert!(
                matches!(&e, Error::Script { script: "echo", message, .. } if message == details)
            );
        }
    }

    #[test]
    fn noperm_inside_a_script_is_permission_naming_script_commands_and_keys() {
        static SETTER: Script = Script::new(
            "setter",
            "redis.call('SET', KEYS[1], ARGV[1]) return redis.pcall(\"pexpire\", KEYS[1], 5)",
        );
        assert_eq!(commands_called(SETTER.source()), vec!["SET", "PEXPIRE"]);
        for details in [
            "NOPERM this user has no permissions to access one of the keys used as arguments",
            "ERR The user executing the script can't access at least one of the keys mentioned \
             in the command arguments script: bffd, on @user_script:1.",
        ] {
            let e = SETTER.error_on(
                fred::error::Error::new(fred::error::ErrorKind::Unknown, details.to_string()),
                Some("app:{x}:k".into()),
            );
            assert_eq!(e.kind(), ErrorKind::Permission, "{e}");
            let text = e.to_string();
            for part in ["setter", "SET", "PEXPIRE", "app:{x}:k", "acl_rule"] {
                assert!(text.contains(part), "{part} missing from: {text}");
            }
        }
    }

    #[test]
    fn transport_errors_keep_their_kind() {
        let io = fred::error::Error::new(fred::error::ErrorKind::IO, "reset");
        assert_eq!(ECHO.error(io).kind(), ErrorKind::Connection);
        let timeout = fred::error::Error::new(fred::error::ErrorKind::Timeout, "slow");
        assert_eq!(ECHO.error(timeout).kind(), ErrorKind::Timeout);
    }

    #[test]
    fn exec_futures_are_send() {
        fn assert_send<T: Send>(_: T) {}
        let client = fred::clients::Client::default();
        assert_send(ECHO.exec::<_, String, _, _>(&client, "k", "v"));
        assert_send(ECHO.exec_pipelined::<_, String, _, _, _>(&client, vec![("k", "v")]));
        assert_send(ECHO.load(&client));
    }
}
