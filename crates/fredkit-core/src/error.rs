//! The one error type every fredkit crate returns.

use std::time::Duration;

/// A fredkit result.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What went wrong, coarsely: the part of an [`Error`] a caller matches on.
///
/// The kinds are stable; new kinds may be added (the enum is
/// `#[non_exhaustive]`), so match with a wildcard arm.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// Redis could not be reached, or the connection broke. Usually transient: retry later.
    Connection,
    /// Redis did not answer in time (command or connect timeout).
    Timeout,
    /// A circuit breaker is open: calls are refused without touching Redis until it half-opens.
    CircuitOpen,
    /// A value could not be encoded or decoded.
    Codec,
    /// The configuration is invalid (bad URL, bad option). Fix the configuration; retrying will not help.
    Config,
    /// A Lua script failed on the server.
    Script,
    /// Redis answered something the caller did not expect (wrong type, malformed reply, server error).
    Protocol,
    /// Redis cannot serve the command right now (a long script, `BUSY`,
    /// `LOADING`, `CLUSTERDOWN`, `TRYAGAIN`, or a server that refuses writes:
    /// `READONLY` after a failover the client has not followed yet, `OOM`,
    /// `NOREPLICAS`, `MASTERDOWN`): retry later.
    Busy,
    /// The operation was given an argument it cannot use (for example a key part that is not allowed).
    InvalidInput,
    /// The server's ACL refused a command, key or channel to the connection's
    /// user (`NOPERM`). Nothing was done. Grant the user the rule of the crate
    /// in use (each crate's `acl_rule`, shown in its README's "Least
    /// privilege (ACL)" section); retrying will not help.
    Permission,
}

/// The error type of every fredkit crate.
///
/// Match on [`Error::kind`] to decide what to do; the `Display` text says what
/// happened and, where possible, what to do about it.
#[non_exhaustive]
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Redis could not be reached or the connection broke.
    #[error("cannot reach Redis: {message}")]
    Connection {
        /// What failed.
        message: String,
        /// The underlying client error, if any.
        #[source]
        source: Option<fred::error::Error>,
    },
    /// Redis did not answer within the configured time.
    #[error("Redis did not answer in time ({message}); check that the server is up and not overloaded, or raise the timeout")]
    Timeout {
        /// What timed out.
        message: String,
        /// The underlying client error, if any.
        #[source]
        source: Option<fred::error::Error>,
    },
    /// A circuit breaker refused the call.
    #[error("circuit breaker '{name}' is open after repeated Redis failures; calls resume in about {retry_after:?}")]
    CircuitOpen {
        /// The breaker's name.
        name: String,
        /// How long until the breaker lets a trial call through.
        retry_after: Duration,
    },
    /// Encoding or decoding a value failed.
    #[error("could not {op} a value with the {codec} codec: {message}")]
    Codec {
        /// `"encode"` or `"decode"`.
        op: &'static str,
        /// The codec's name.
        codec: &'static str,
        /// What the codec said.
        message: String,
    },
    /// The configuration is invalid.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// A Lua script failed.
    #[error("script '{script}' failed: {message}")]
    Script {
        /// The script's name.
        script: &'static str,
        /// What Redis said.
        message: String,
        /// The underlying client error, if any.
        #[source]
        source: Option<fred::error::Error>,
    },
    /// Redis answered something unexpected.
    #[error("unexpected reply from Redis: {message}")]
    Protocol {
        /// What was unexpected.
        message: String,
        /// The underlying client error, if any.
        #[source]
        source: Option<fred::error::Error>,
    },
    /// Redis is busy or refuses writes for now.
    #[error("Redis cannot serve this right now ({0}); retry later")]
    Busy(String),
    /// An argument cannot be used.
    #[error("invalid input: {0}")]
    InvalidInput(String),
    /// The server's ACL refused a command, key or channel (`NOPERM`).
    #[error("{}", permission_text(.command, .key, .message))]
    Permission {
        /// The refused command (`EVALSHA`, `SET`...), or for a script the
        /// script and the commands it calls, when known.
        command: Option<String>,
        /// The key (or keys) the command touched, when known.
        key: Option<String>,
        /// What Redis said (`NOPERM this user has no permissions to ...`).
        message: String,
        /// The underlying client error, if any.
        #[source]
        source: Option<fred::error::Error>,
    },
}

/// The `Display` text of [`Error::Permission`]: what was refused, on which
/// key, Redis's own words, and what to do.
fn permission_text(command: &Option<String>, key: &Option<String>, message: &str) -> String {
    let command = command.as_deref().unwrap_or("a command");
    let key = match key {
        Some(key) => format!(" on key '{key}'"),
        None => String::new(),
    };
    format!(
        "Redis ACL refused {command}{key}: {message}; add the ACL rule of the fredkit crate in use \
         for this key prefix to the connection's user (the crate's `acl_rule`, shown in its README \
         under \"Least privilege (ACL)\"), e.g. ACL SETUSER <user> <rule>"
    )
}

impl Error {
    /// The coarse kind of this error.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::Connection { .. } => ErrorKind::Connection,
            Error::Timeout { .. } => ErrorKind::Timeout,
            Error::CircuitOpen { .. } => ErrorKind::CircuitOpen,
            Error::Codec { .. } => ErrorKind::Codec,
            Error::Config(_) => ErrorKind::Config,
            Error::Script { .. } => ErrorKind::Script,
            Error::Protocol { .. } => ErrorKind::Protocol,
            Error::Busy(_) => ErrorKind::Busy,
            Error::InvalidInput(_) => ErrorKind::InvalidInput,
            Error::Permission { .. } => ErrorKind::Permission,
        }
    }

    /// True when the error says nothing about the operation itself, only that
    /// Redis was unreachable, slow, busy or shielded by an open breaker: the
    /// kind of error a fail-open primitive may turn into a fallback and a
    /// circuit breaker counts as a failure.
    pub fn is_unavailable(&self) -> bool {
        matches!(
            self.kind(),
            ErrorKind::Connection | ErrorKind::Timeout | ErrorKind::CircuitOpen | ErrorKind::Busy
        )
    }

    /// A [`ErrorKind::Protocol`] error with a message.
    pub fn protocol(message: impl Into<String>) -> Self {
        Error::Protocol {
            message: message.into(),
            source: None,
        }
    }

    /// A [`ErrorKind::Config`] error with a message.
    pub fn config(message: impl Into<String>) -> Self {
        Error::Config(message.into())
    }

    /// A [`ErrorKind::InvalidInput`] error with a message.
    pub fn invalid_input(message: impl Into<String>) -> Self {
        Error::InvalidInput(message.into())
    }

    /// A [`ErrorKind::Timeout`] error with a message.
    pub fn timeout(message: impl Into<String>) -> Self {
        Error::Timeout {
            message: message.into(),
            source: None,
        }
    }

    /// A [`ErrorKind::Permission`] error: `command` (if known) on `key` (if
    /// known) was refused with Redis's `message`.
    pub fn permission(
        command: Option<String>,
        key: Option<String>,
        message: impl Into<String>,
    ) -> Self {
        Error::Permission {
            command,
            key,
            message: message.into(),
            source: None,
        }
    }

    /// Names `command` and `key` in an [`ErrorKind::Permission`] error that
    /// does not name them yet (Redis 7.0's `NOPERM` names no key, and only
    /// sometimes the command); any other error is returned unchanged. A
    /// primitive calls it where it knows what it sent:
    /// `.map_err(|e| Error::from(e).naming("XADD", &key))`.
    #[must_use]
    pub fn naming(self, command: &str, key: &str) -> Error {
        match self {
            Error::Permission {
                command: found,
                key: found_key,
                message,
                source,
            } => Error::Permission {
                command: found.or_else(|| Some(command.to_owned())),
                key: found_key.or_else(|| Some(key.to_owned())),
                message,
                source,
            },
            other => other,
        }
    }

    /// A [`ErrorKind::Connection`] error with a message.
    pub fn connection(message: impl Into<String>) -> Self {
        Error::Connection {
            message: message.into(),
            source: None,
        }
    }
}

/// True when Redis refused a command, key or channel to the user by its ACL:
/// `NOPERM ...` at top level (also wrapped by an older server as
/// `... -NOPERM ...`), or from inside a script on Redis 7.0, which words it
/// `ERR The user executing the script can't ...` without the code.
pub(crate) fn is_noperm(details: &str) -> bool {
    details.starts_with("NOPERM")
        || details.contains("-NOPERM ")
        || details.contains("The user executing the script can't")
}

/// The command a `NOPERM` text names (`... to run the 'del' command`), upper-cased.
pub(crate) fn noperm_command(details: &str) -> Option<String> {
    let rest = details.split("to run the '").nth(1)?;
    let name = rest.split('\'').next()?;
    (!name.is_empty()).then(|| name.to_ascii_uppercase())
}

/// Error codes of a server that is up but refuses writes for now.
const REFUSES_WRITES: [&str; 4] = ["READONLY", "OOM", "NOREPLICAS", "MASTERDOWN"];

impl From<fred::error::Error> for Error {
    fn from(e: fred::error::Error) -> Self {
        use fred::error::ErrorKind as K;
        let details = e.details().to_string();
        match e.kind() {
            K::IO | K::Canceled | K::Backpressure | K::Routing => Error::Connection {
                message: details,
                source: Some(e),
            },
            // fred gives up on a command whose every write attempt failed
            // (its node's connection is gone, e.g. a killed cluster master
            // before its replica's promotion) or that it could not route to
            // any connection: both are the connection's fault, not the
            // command's, and retryable once the topology settles.
            K::Unknown
                if details.starts_with("Too many failed write attempts")
                    || details.starts_with("Failed to route command") =>
            {
                Error::Connection {
                    message: details,
                    source: Some(e),
                }
            }
            K::Timeout => Error::Timeout {
                message: details,
                source: Some(e),
            },
            // Before the script and auth arms: a NOPERM inside a script is an
            // ACL problem, not a bug in the script.
            _ if is_noperm(&details) => Error::Permission {
                command: noperm_command(&details),
                key: None,
                message: details,
                source: Some(e),
            },
            K::Config | K::Url | K::Auth => {
                Error::Config(format!("{} ({details})", e.kind().to_str()))
            }
            _ if details.starts_with("BUSY") || details.starts_with("LOADING") => {
                Error::Busy(details)
            }
            // A server that refuses writes is an outage for the caller, also
            // when the refusal comes from inside a script (Redis 7 puts the
            // code first; older servers wrap it as "... -READONLY ...").
            _ if REFUSES_WRITES.iter().any(|code| {
                details.starts_with(code) || details.contains(&format!("-{code} "))
            }) =>
            {
                Error::Busy(details)
            }
            K::Cluster if details.starts_with("CLUSTERDOWN") || details.starts_with("TRYAGAIN") => {
                Error::Busy(details)
            }
            _ if details.starts_with("NOSCRIPT")
                || details.starts_with("ERR Error running script")
                || details.contains("user_script")
                || details.starts_with("ERR user_script") =>
            {
                Error::Script {
                    script: "?",
                    message: details,
                    source: Some(e),
                }
            }
            _ => Error::Protocol {
                message: details,
                source: Some(e),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fred::error::{Error as FredError, ErrorKind as FredKind};
    use rstest::rstest;

    #[rstest]
    #[case(FredKind::IO, "broken pipe", ErrorKind::Connection)]
    #[case(FredKind::Canceled, "canceled", ErrorKind::Connection)]
    #[case(FredKind::Timeout, "Request timed out.", ErrorKind::Timeout)]
    #[case(
        FredKind::Unknown,
        "Too many failed write attempts.",
        ErrorKind::Connection
    )]
    #[case(FredKind::Unknown, "Failed to route command.", ErrorKind::Connection)]
    #[case(FredKind::Url, "bad url", ErrorKind::Config)]
    #[case(FredKind::Auth, "WRONGPASS", ErrorKind::Config)]
    #[case(
        FredKind::Unknown,
        "BUSY Redis is busy running a script",
        ErrorKind::Busy
    )]
    #[case(
        FredKind::Unknown,
        "LOADING Redis is loading the dataset",
        ErrorKind::Busy
    )]
    #[case(FredKind::Cluster, "CLUSTERDOWN The cluster is down", ErrorKind::Busy)]
    #[case(
        FredKind::Unknown,
        "READONLY You can't write against a read only replica.",
        ErrorKind::Busy
    )]
    #[case(
        FredKind::Unknown,
        "ERR Error running script (call to f_0123): @user_script:1: -READONLY You can't write",
        ErrorKind::Busy
    )]
    #[case(
        FredKind::Unknown,
        "OOM command not allowed when used memory > 'maxmemory'.",
        ErrorKind::Busy
    )]
    #[case(
        FredKind::Unknown,
        "NOREPLICAS Not enough good replicas",
        ErrorKind::Busy
    )]
    #[case(
        FredKind::Unknown,
        "MASTERDOWN Link with MASTER is down",
        ErrorKind::Busy
    )]
    #[case(FredKind::Unknown, "NOSCRIPT No matching script", ErrorKind::Script)]
    #[case(
        FredKind::Unknown,
        "NOPERM this user has no permissions to run the 'del' command",
        ErrorKind::Permission
    )]
    #[case(
        FredKind::Auth,
        "NOPERM this user has no permissions to access one of the keys used as arguments",
        ErrorKind::Permission
    )]
    #[case(
        FredKind::Unknown,
        "ERR The user executing the script can't run this command or subcommand script: 6f6c, on @user_script:1.",
        ErrorKind::Permission
    )]
    #[case(
        FredKind::InvalidArgument,
        "WRONGTYPE Operation against a key",
        ErrorKind::Protocol
    )]
    fn fred_errors_map_to_kinds(
        #[case] kind: FredKind,
        #[case] details: &str,
        #[case] want: ErrorKind,
    ) {
        let e: Error = FredError::new(kind, details.to_string()).into();
        assert_eq!(e.kind(), want, "{e}");
    }

    #[test]
    fn noperm_names_the_command_and_says_what_to_do() {
        let e: Error = FredError::new(
            FredKind::Unknown,
            "NOPERM this user has no permissions to run the 'del' command",
        )
        .into();
        let text = e.to_string();
        assert!(
            matches!(&e, Error::Permission { command: Some(c), .. } if c == "DEL"),
            "{e:?}"
        );
        assert!(text.contains("DEL") && text.contains("NOPERM"), "{text}");
        assert!(
            text.contains("acl_rule") && text.contains("ACL SETUSER"),
            "{text}"
        );
        assert!(!e.is_unavailable());

        let keyed: Error = FredError::new(
            FredKind::Unknown,
            "NOPERM this user has no permissions to access one of the keys used as arguments",
        )
        .into();
        let text = keyed.naming("XADD", "app:{s}:stream").to_string();
        assert!(text.contains("XADD on key 'app:{s}:stream'"), "{text}");
        assert!(!Error::timeout("t")
            .naming("X", "k")
            .to_string()
            .contains("'k'"));
    }

    #[test]
    fn unavailable_kinds_are_the_transient_ones() {
        assert!(Error::timeout("x").is_unavailable());
        assert!(Error::connection("x").is_unavailable());
        assert!(!Error::config("x").is_unavailable());
        assert!(!Error::protocol("x").is_unavailable());
    }
}
