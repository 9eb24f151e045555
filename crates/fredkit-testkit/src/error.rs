//! The one error type of the testkit.

use std::io;
use std::path::PathBuf;
use std::time::Duration;

/// The install hint repeated by every "binary not found" message.
const INSTALL_HINT: &str =
    "install it with 'apt-get install redis-server redis-tools redis-sentinel'";

/// Everything that can go wrong while starting, faulting or talking to a test server.
///
/// Every message says what happened and, where there is one, what to do about it.
/// Startup failures carry the tail of the server's log file.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TestkitError {
    /// `FREDKIT_REDIS_SERVER` is unset and no `redis-server` is on `PATH`.
    #[error(
        "redis-server not found on PATH: {INSTALL_HINT} (or set FREDKIT_REDIS_SERVER to its path)"
    )]
    ServerNotFound,

    /// An explicitly configured binary (`FREDKIT_REDIS_SERVER` or
    /// [`ServerOptions::binary`](crate::ServerOptions::binary)) does not exist.
    #[error(
        "redis-server not found at '{}' (set by {origin}): {INSTALL_HINT}, \
         or point {origin} at an existing redis-server binary",
        path.display()
    )]
    BinaryNotFound {
        /// The configured path.
        path: PathBuf,
        /// Where the path came from (`FREDKIT_REDIS_SERVER` or `ServerOptions::binary`).
        origin: &'static str,
    },

    /// The binary exists but could not be executed.
    #[error("could not start '{}': {source} (is it an executable redis-server?)", binary.display())]
    Spawn {
        /// The binary we tried to run.
        binary: PathBuf,
        /// The operating system error.
        source: io::Error,
    },

    /// No free loopback port was found (including the cluster bus port, port + 10000).
    #[error(
        "no free loopback port pair (port and port+10000) found after {attempts} attempts: \
         free some ports or stop stray redis-server processes"
    )]
    NoFreePort {
        /// How many ports were tried.
        attempts: u32,
    },

    /// The server process exited while we waited for it to become ready.
    #[error(
        "redis-server for {addr} exited during startup ({status}); last lines of {}:\n{log_tail}",
        log.display()
    )]
    Exited {
        /// The address the server was meant to listen on.
        addr: String,
        /// The exit status as reported by the OS.
        status: String,
        /// The server's log file (stdout and stderr).
        log: PathBuf,
        /// The last lines of that log file.
        log_tail: String,
    },

    /// The server did not answer `PING` with `PONG` before the deadline.
    #[error(
        "redis-server for {addr} was not ready after {waited:?} (last answer: {last}); \
         last lines of {}:\n{log_tail}",
        log.display()
    )]
    NotReady {
        /// The address the server listens on.
        addr: String,
        /// How long we waited.
        waited: Duration,
        /// The last reply or error seen while polling.
        last: String,
        /// The server's log file (stdout and stderr).
        log: PathBuf,
        /// The last lines of that log file.
        log_tail: String,
    },

    /// Connecting to a server, or sending to or reading from it, failed (this includes
    /// socket timeouts, see [`TestkitError::is_timeout`]).
    #[error("'{command}' to {addr} failed: {source}")]
    Command {
        /// The address of the server.
        addr: String,
        /// The command's name.
        command: String,
        /// The transport error.
        source: io::Error,
    },

    /// The server sent bytes that are not valid RESP2.
    #[error("malformed reply from {addr}: {detail}")]
    Protocol {
        /// The address of the server.
        addr: String,
        /// What was wrong.
        detail: String,
    },

    /// The server answered with an error where the testkit needed success.
    #[error("'{command}' to {addr} was refused: {message}")]
    Server {
        /// The address of the server.
        addr: String,
        /// The command's name.
        command: String,
        /// The error reply, e.g. `ERR unknown command`.
        message: String,
    },

    /// An operation that needs a live process was called on a killed server.
    #[error("the redis-server for port {port} is not running: call restart() first")]
    NotRunning {
        /// The server's port.
        port: u16,
    },

    /// Sending a signal to a server process failed.
    #[error("sending {signal} to redis-server pid {pid} failed: {source}")]
    Signal {
        /// The process id.
        pid: u32,
        /// The signal's name.
        signal: &'static str,
        /// The OS error.
        source: nix::errno::Errno,
    },

    /// The orphan guardian (a `/bin/sh` helper process) could not be started or written to,
    /// so a server could not be protected against outliving the test process.
    #[error("the orphan guardian (/bin/sh) failed: {source}; is /bin/sh available?")]
    Guardian {
        /// The OS error.
        source: io::Error,
    },

    /// A local filesystem operation (temp dir, log file, config file) failed.
    #[error("{context}: {source}")]
    Io {
        /// What we were doing.
        context: String,
        /// The OS error.
        source: io::Error,
    },

    /// The options describe a topology that cannot be built.
    #[error("invalid options: {0}")]
    InvalidOptions(String),

    /// A topology did not reach the awaited state before the deadline.
    #[error("{what} did not happen within {waited:?}; last observation: {last}")]
    Timeout {
        /// The awaited condition.
        what: String,
        /// How long we waited.
        waited: Duration,
        /// The last thing we saw, to help diagnose.
        last: String,
    },

    /// No node of a topology could answer a question (all killed, paused or unsure).
    #[error("{what}: no node could answer (last answer: {last})")]
    Unanswered {
        /// The question.
        what: String,
        /// The last answer or error seen.
        last: String,
    },

    /// A cluster slot is served by a node that is not in
    /// [`RedisCluster::masters`](crate::RedisCluster::masters) (a replica was promoted).
    #[error(
        "slot {slot} is served by {addr}, which was started as a replica (a failover happened): \
         use RedisCluster::owner_of_slot to get that server"
    )]
    SlotOwnerNotInMasters {
        /// The slot.
        slot: u16,
        /// The address of the node that serves it.
        addr: String,
    },
}

impl TestkitError {
    /// True when this is a socket timeout (connect, read or write), e.g. while a server is
    /// paused with [`RedisServer::pause`](crate::RedisServer::pause).
    pub fn is_timeout(&self) -> bool {
        matches!(
            self,
            TestkitError::Command { source, .. }
                if matches!(source.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut)
        )
    }

    pub(crate) fn io(context: impl Into<String>, source: io::Error) -> Self {
        TestkitError::Io {
            context: context.into(),
            source,
        }
    }
}

/// The testkit's result type.
pub type Result<T, E = TestkitError> = std::result::Result<T, E>;
