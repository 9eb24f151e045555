//! One `redis-server` child process with fault controls.

use std::collections::BTreeSet;
use std::ffi::OsString;
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom};
use std::net::{Ipv4Addr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use nix::sys::signal::{self, Signal};
use nix::unistd::Pid;
use rand::Rng;

use crate::error::{Result, TestkitError};
use crate::guardian;
use crate::resp::{Connection, Reply};
use crate::tls::{ServerTls, TlsCerts};
use std::sync::Arc;

/// Environment variable naming the `redis-server` binary (a path, or a name looked up on `PATH`).
pub const REDIS_SERVER_ENV: &str = "FREDKIT_REDIS_SERVER";

/// Timeout of [`RedisServer::command`]: connect, write and read each.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a server may take to answer `PING` after it was spawned.
const DEFAULT_READY_TIMEOUT: Duration = Duration::from_secs(10);
/// Ports are picked from here; the cluster bus adds 10000, which keeps both below Linux's
/// default ephemeral range (32768-60999), where outgoing connections would compete for them.
const PORT_RANGE: std::ops::RangeInclusive<u16> = 16000..=22000;
const CLUSTER_BUS_OFFSET: u16 = 10000;
/// How many times a start is retried when another process grabbed the port first.
const START_ATTEMPTS: u32 = 20;
const LOG_TAIL_LINES: usize = 25;

/// Options for [`RedisServer::start_with`]. The default is: no AOF, no password, no extra
/// arguments, the binary from `FREDKIT_REDIS_SERVER` or `PATH`, a 10 s readiness deadline.
#[derive(Clone, Debug, Default)]
pub struct ServerOptions {
    aof: bool,
    password: Option<String>,
    args: Vec<(String, String)>,
    binary: Option<PathBuf>,
    ready_timeout: Option<Duration>,
    tls: Option<ServerTls>,
}

impl ServerOptions {
    /// Turns the append-only file on (`--appendonly yes`), so that data written before a
    /// [`RedisServer::kill`] is there again after [`RedisServer::restart`].
    pub fn aof(mut self, on: bool) -> Self {
        self.aof = on;
        self
    }

    /// Requires this password (`--requirepass`); [`RedisServer::url`] and
    /// [`RedisServer::command`] then use it.
    pub fn password(mut self, pw: impl Into<String>) -> Self {
        self.password = Some(pw.into());
        self
    }

    /// Adds a config argument (`--name value`), after the testkit's own, so it wins over them.
    /// `name` may be given with or without the leading `--`; `value` is passed as one
    /// command-line word (an empty string is allowed, as in `save ""`).
    pub fn arg(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        let name = name.into();
        let name = name.strip_prefix("--").map(str::to_owned).unwrap_or(name);
        self.args.push((name, value.into()));
        self
    }

    /// Runs this binary instead of `FREDKIT_REDIS_SERVER` or `redis-server` from `PATH`.
    /// A path that does not exist makes the start fail with [`TestkitError::BinaryNotFound`].
    pub fn binary(mut self, path: impl Into<PathBuf>) -> Self {
        self.binary = Some(path.into());
        self
    }

    /// How long a (re)started server may take to answer `PING` (default 10 s).
    pub fn ready_timeout(mut self, timeout: Duration) -> Self {
        self.ready_timeout = Some(timeout);
        self
    }

    /// Serves TLS only, with these certificates: `--port 0 --tls-port PORT`, the server
    /// certificate, the CA for client certificates, and TLS on replication links
    /// (`tls-replication yes`); a cluster built from these options also runs its bus over
    /// TLS (`tls-cluster yes`), and a [`SentinelGroup`](crate::SentinelGroup) its sentinels.
    /// Client certificates are not required unless [`ServerOptions::tls_auth_clients`] says
    /// so. [`RedisServer::url`] becomes a `rediss://` URL carrying the CA and the client
    /// certificate (see [`TlsCerts::url_options`]).
    pub fn tls(mut self, certs: Arc<TlsCerts>) -> Self {
        let auth_clients = self.tls.as_ref().is_some_and(|t| t.auth_clients);
        self.tls = Some(ServerTls {
            certs,
            auth_clients,
        });
        self
    }

    /// With [`ServerOptions::tls`]: whether clients must present a certificate signed by the
    /// CA (`tls-auth-clients yes`) or not (`no`, the default here). The testkit's own
    /// connections always present one.
    pub fn tls_auth_clients(mut self, required: bool) -> Self {
        if let Some(tls) = self.tls.as_mut() {
            tls.auth_clients = required;
        }
        self
    }

    pub(crate) fn password_ref(&self) -> Option<&str> {
        self.password.as_deref()
    }

    pub(crate) fn tls_ref(&self) -> Option<&ServerTls> {
        self.tls.as_ref()
    }
}

/// What the child process is.
#[derive(Clone, Debug)]
pub(crate) enum Kind {
    /// A data node configured on the command line.
    Data,
    /// A sentinel: `redis-server sentinel.conf --sentinel`. The config file is written once
    /// (the sentinel rewrites it with what it learns) from this body plus port, bind and dir.
    Sentinel { conf_body: String },
}

/// One `redis-server` child process on a loopback port, in its own temp dir.
///
/// The process is killed (SIGKILL, then reaped) when the value is dropped, also when a test
/// panics; if the whole test process dies first, the orphan guardian kills it (see the crate
/// docs). The port stays reserved for this value until it is dropped, so [`RedisServer::restart`]
/// comes back on the same address.
pub struct RedisServer {
    port: u16,
    kind: Kind,
    // Boxed: the options (TLS paths among them) would make every enum holding a server large.
    opts: Box<ServerOptions>,
    binary: PathBuf,
    log: PathBuf,
    child: Mutex<Option<Child>>,
    paused: AtomicBool,
    // Last field: dropped after the process is killed in `Drop`.
    dir: tempfile::TempDir,
}

impl std::fmt::Debug for RedisServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisServer")
            .field("addr", &self.addr())
            .field("pid", &self.pid())
            .field("dir", &self.dir.path())
            .finish()
    }
}

impl RedisServer {
    /// Starts a standalone server with default [`ServerOptions`] and waits until it answers
    /// `PING`.
    ///
    /// # Errors
    /// [`TestkitError::ServerNotFound`] with an install hint when there is no `redis-server`;
    /// [`TestkitError::Exited`] or [`TestkitError::NotReady`] with the server's log tail when
    /// it does not come up; [`TestkitError::NoFreePort`] when no port is free.
    pub fn start() -> Result<RedisServer> {
        Self::start_with(ServerOptions::default())
    }

    /// Starts a standalone server with `opts` and waits until it answers `PING`. A port taken
    /// by another process between our check and the server's bind is retried on a new port.
    ///
    /// # Errors
    /// As [`RedisServer::start`].
    pub fn start_with(opts: ServerOptions) -> Result<RedisServer> {
        Self::launch(Kind::Data, opts)
    }

    pub(crate) fn launch(kind: Kind, opts: ServerOptions) -> Result<RedisServer> {
        let binary = resolve_binary(&opts)?;
        guardian::ensure_started()?;
        let dir = tempfile::Builder::new()
            .prefix("fredkit-redis-")
            .tempdir()
            .map_err(|e| TestkitError::io("creating a temp dir for redis-server", e))?;
        guardian::watch_dir(dir.path())?;
        let log = dir.path().join("redis.log");
        let mut server = RedisServer {
            port: reserve_port()?,
            kind,
            opts: Box::new(opts),
            binary,
            log,
            child: Mutex::new(None),
            paused: AtomicBool::new(false),
            dir,
        };
        let mut attempts = 1;
        loop {
            if let Kind::Sentinel { conf_body } = &server.kind {
                server.write_sentinel_conf(conf_body)?;
            }
            match server.spawn_and_wait() {
                Ok(()) => {
                    tracing::debug!(addr = %server.addr(), pid = ?server.pid(), dir = %server.dir().display(), "redis-server started");
                    return Ok(server);
                }
                Err(Attempt::PortTaken(e)) if attempts >= START_ATTEMPTS => return Err(e),
                Err(Attempt::PortTaken(_)) => {
                    // Lost the race for the port to another process: move to a new one.
                    let taken = server.port;
                    tracing::debug!(port = taken, "port taken by another process, retrying");
                    server.port = reserve_port()?;
                    release_port(taken);
                    attempts += 1;
                }
                Err(Attempt::Failed(e)) => return Err(e),
            }
        }
    }

    /// The port the server listens on (on 127.0.0.1). Stays the same across restarts.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `"127.0.0.1:PORT"`.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// `"redis://127.0.0.1:PORT"`, or `"redis://:PASSWORD@127.0.0.1:PORT"` with a password
    /// (percent-encoded). A TLS server's is `"rediss://127.0.0.1:PORT?ca_file=...&..."`,
    /// trusting the testkit's CA and presenting its client certificate
    /// ([`TlsCerts::url_options`]).
    pub fn url(&self) -> String {
        let s = if self.opts.tls.is_some() { "s" } else { "" };
        let url = match &self.opts.password {
            Some(pw) => format!("redis{s}://:{}@127.0.0.1:{}", percent_encode(pw), self.port),
            None => format!("redis{s}://127.0.0.1:{}", self.port),
        };
        match &self.opts.tls {
            Some(tls) => format!("{url}?{}", tls.certs.url_options()),
            None => url,
        }
    }

    /// The certificates of a TLS server ([`ServerOptions::tls`]), `None` for a plain one.
    pub fn tls_certs(&self) -> Option<&Arc<TlsCerts>> {
        self.opts.tls.as_ref().map(|t| &t.certs)
    }

    /// The password the server requires, if any.
    pub fn password(&self) -> Option<&str> {
        self.opts.password.as_deref()
    }

    /// The server's temp dir (its `--dir`: AOF, `nodes.conf`, `sentinel.conf`, the log).
    /// Removed when the server is dropped, or by the guardian when the test process dies.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The file that receives the server's stdout and stderr (appended to across restarts).
    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// The last lines of the server's log, for assertion messages.
    pub fn log_tail(&self) -> String {
        log_tail(&self.log, 0)
    }

    /// The process id, or `None` while the server is killed (or exited on its own).
    pub fn pid(&self) -> Option<u32> {
        let mut child = self.child();
        reap_if_exited(&mut child);
        child.as_ref().map(Child::id)
    }

    /// True while the process exists (also while it is paused).
    pub fn is_running(&self) -> bool {
        self.pid().is_some()
    }

    /// True between [`RedisServer::pause`] and [`RedisServer::resume`] (or a kill).
    pub fn is_paused(&self) -> bool {
        self.paused.load(Ordering::SeqCst)
    }

    /// Kills the process with SIGKILL and reaps it. Nothing is flushed: without AOF, the data
    /// is gone. The port stays reserved for [`RedisServer::restart`]. Killing a killed server
    /// does nothing.
    ///
    /// # Errors
    /// [`TestkitError::Io`] if the process could not be signalled or reaped.
    pub fn kill(&mut self) -> Result<()> {
        let child = self
            .child
            .get_mut()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .take();
        self.paused.store(false, Ordering::SeqCst);
        match child {
            Some(child) => {
                tracing::debug!(addr = %self.addr(), pid = child.id(), "killing redis-server");
                kill_and_reap(child)
            }
            None => Ok(()),
        }
    }

    /// Starts the server again on the same port, with the same arguments and directory, and
    /// waits until it answers `PING` (after loading its AOF, if [`ServerOptions::aof`] is on).
    /// A running server is killed first.
    ///
    /// # Errors
    /// [`TestkitError::Exited`] or [`TestkitError::NotReady`] (with the log tail) when it does
    /// not come back, e.g. because another process took the port meanwhile.
    pub fn restart(&mut self) -> Result<()> {
        self.kill()?;
        let deadline = Instant::now() + Duration::from_secs(2);
        loop {
            match self.spawn_and_wait() {
                Ok(()) => {
                    tracing::debug!(addr = %self.addr(), pid = ?self.pid(), "redis-server restarted");
                    return Ok(());
                }
                // The old socket may linger for a moment; a stranger on our port will not.
                Err(Attempt::PortTaken(e)) if Instant::now() >= deadline => return Err(e),
                Err(Attempt::PortTaken(_)) => std::thread::sleep(Duration::from_millis(100)),
                Err(Attempt::Failed(e)) => return Err(e),
            }
        }
    }

    /// Freezes the process with SIGSTOP: connections are accepted by the kernel but nothing is
    /// answered, as with a server stuck in a long command or a network stall.
    ///
    /// # Errors
    /// [`TestkitError::NotRunning`] when killed; [`TestkitError::Signal`] if the signal fails.
    pub fn pause(&self) -> Result<()> {
        self.signal(Signal::SIGSTOP, "SIGSTOP")?;
        self.paused.store(true, Ordering::SeqCst);
        Ok(())
    }

    /// Lets a paused process continue with SIGCONT; queued commands are then answered.
    ///
    /// # Errors
    /// [`TestkitError::NotRunning`] when killed; [`TestkitError::Signal`] if the signal fails.
    pub fn resume(&self) -> Result<()> {
        self.signal(Signal::SIGCONT, "SIGCONT")?;
        self.paused.store(false, Ordering::SeqCst);
        Ok(())
    }

    /// Sends `CLIENT PAUSE <ms> ALL`: the server delays every client command for `d`, while
    /// the process stays responsive to the OS (unlike [`RedisServer::pause`]).
    ///
    /// # Errors
    /// As [`RedisServer::command`], and [`TestkitError::Server`] if the server refuses.
    pub fn client_pause(&self, d: Duration) -> Result<()> {
        let ms = d.as_millis().max(1).to_string();
        self.connect(COMMAND_TIMEOUT)?
            .call_ok(&["CLIENT", "PAUSE", &ms, "ALL"])?;
        Ok(())
    }

    /// Sends one command over a fresh connection (after `AUTH` when a password is set) and
    /// returns the raw reply; error replies come back as `Ok(Reply::Error(..))`. Connect,
    /// write and read each time out after 5 s. Meant for test plumbing, not for the code
    /// under test.
    ///
    /// # Errors
    /// [`TestkitError::NotRunning`] when killed; [`TestkitError::Command`] on connection
    /// failures and timeouts; [`TestkitError::Server`] if `AUTH` is refused.
    pub fn command(&self, args: &[&str]) -> Result<Reply> {
        self.command_with_timeout(args, COMMAND_TIMEOUT)
    }

    /// Like [`RedisServer::command`] with a custom socket timeout; a timeout is reported as a
    /// [`TestkitError::Command`] for which [`TestkitError::is_timeout`] is true.
    ///
    /// # Errors
    /// As [`RedisServer::command`].
    pub fn command_with_timeout(&self, args: &[&str], timeout: Duration) -> Result<Reply> {
        self.connect(timeout)?.call(args)
    }

    pub(crate) fn connect(&self, timeout: Duration) -> Result<Connection> {
        if !self.is_running() {
            return Err(TestkitError::NotRunning { port: self.port });
        }
        let mut conn = Connection::open(self.port, timeout, self.tls_certs().map(Arc::as_ref))?;
        if let Some(pw) = &self.opts.password {
            conn.auth(pw)?;
        }
        Ok(conn)
    }

    fn child(&self) -> MutexGuard<'_, Option<Child>> {
        self.child
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn signal(&self, sig: Signal, name: &'static str) -> Result<()> {
        let pid = self
            .pid()
            .ok_or(TestkitError::NotRunning { port: self.port })?;
        let raw = i32::try_from(pid).map_err(|_| TestkitError::Signal {
            pid,
            signal: name,
            source: nix::errno::Errno::ESRCH,
        })?;
        signal::kill(Pid::from_raw(raw), sig).map_err(|source| TestkitError::Signal {
            pid,
            signal: name,
            source,
        })
    }

    fn args(&self) -> Vec<OsString> {
        let dir = self.dir.path().as_os_str().to_owned();
        if let Kind::Sentinel { .. } = self.kind {
            return vec![self.sentinel_conf().into_os_string(), "--sentinel".into()];
        }
        let mut args: Vec<OsString> = match &self.opts.tls {
            // TLS only: no plain port at all.
            Some(tls) => {
                let mut a: Vec<OsString> = vec![
                    "--port".into(),
                    "0".into(),
                    "--tls-port".into(),
                    self.port.to_string().into(),
                ];
                for (name, value) in tls.args() {
                    a.push(format!("--{name}").into());
                    a.push(value.into());
                }
                a
            }
            None => vec!["--port".into(), self.port.to_string().into()],
        };
        args.extend([
            "--bind".into(),
            "127.0.0.1".into(),
            "--save".into(),
            "".into(),
            "--appendonly".into(),
            if self.opts.aof { "yes" } else { "no" }.into(),
            "--dir".into(),
            dir,
            "--daemonize".into(),
            "no".into(),
            "--protected-mode".into(),
            "no".into(),
            // 7.0 waits 5 s by default before a diskless full sync, hoping for more replicas.
            "--repl-diskless-sync-delay".into(),
            "0".into(),
            // fredkit never enumerates with KEYS (it blocks the server for the
            // whole keyspace): every server the test suite runs has no KEYS
            // command, so a KEYS anywhere in the library fails the tests that
            // reach it ("ERR unknown command 'KEYS'").
            "--rename-command".into(),
            "KEYS".into(),
            "".into(),
        ]);
        if let Some(pw) = &self.opts.password {
            args.push("--requirepass".into());
            args.push(pw.into());
        }
        for (name, value) in &self.opts.args {
            args.push(format!("--{name}").into());
            args.push(value.into());
        }
        args
    }

    fn sentinel_conf(&self) -> PathBuf {
        self.dir.path().join("sentinel.conf")
    }

    fn write_sentinel_conf(&self, body: &str) -> Result<()> {
        let ports = match &self.opts.tls {
            Some(tls) => {
                let mut lines = format!("port 0\ntls-port {}\n", self.port);
                for (name, value) in tls.args() {
                    lines.push_str(&format!("{name} \"{value}\"\n"));
                }
                lines
            }
            None => format!("port {}\n", self.port),
        };
        let conf = format!(
            "{ports}bind 127.0.0.1\ndaemonize no\nprotected-mode no\ndir \"{}\"\n{body}",
            self.dir.path().display()
        );
        fs::write(self.sentinel_conf(), conf)
            .map_err(|e| TestkitError::io("writing sentinel.conf", e))
    }

    /// Spawns the process, registers it with the guardian and waits until it is ready.
    fn spawn_and_wait(&self) -> Result<(), Attempt> {
        let log_start = fs::metadata(&self.log).map(|m| m.len()).unwrap_or(0);
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .map_err(|e| TestkitError::io(format!("opening {}", self.log.display()), e))?;
        let log_err = log
            .try_clone()
            .map_err(|e| TestkitError::io("duplicating the log file handle", e))?;
        let child = Command::new(&self.binary)
            .args(self.args())
            .current_dir(self.dir.path())
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err)
            .spawn()
            .map_err(|source| TestkitError::Spawn {
                binary: self.binary.clone(),
                source,
            })?;
        let pid = child.id();
        if let Err(e) = guardian::watch_pid(pid) {
            // Unprotected against orphaning: do not hand it out.
            let _ = kill_and_reap(child);
            return Err(e.into());
        }
        *self.child() = Some(child);
        let result = self.wait_ready(pid, log_start);
        if result.is_err() {
            let child = self.child().take();
            if let Some(child) = child {
                let _ = kill_and_reap(child);
            }
        }
        result
    }

    fn wait_ready(&self, pid: u32, log_start: u64) -> Result<(), Attempt> {
        let timeout = self.opts.ready_timeout.unwrap_or(DEFAULT_READY_TIMEOUT);
        let started = Instant::now();
        let mut pause = Duration::from_millis(5);
        loop {
            {
                let mut child = self.child();
                if let Some(c) = child.as_mut() {
                    if let Ok(Some(status)) = c.try_wait() {
                        *child = None;
                        guardian::forget_pid(pid);
                        let tail = log_tail(&self.log, log_start);
                        let err = TestkitError::Exited {
                            addr: self.addr(),
                            status: status.to_string(),
                            log: self.log.clone(),
                            log_tail: tail.clone(),
                        };
                        return Err(if tail.contains("Address already in use") {
                            Attempt::PortTaken(err)
                        } else {
                            Attempt::Failed(err)
                        });
                    }
                }
            }
            let last = match self.probe(pid) {
                Ok(Probe::Ready) => return Ok(()),
                Ok(Probe::NotYet(what)) => what,
                Ok(Probe::Stranger(other)) => {
                    // Someone else answers on our port; our process will fail to bind.
                    return Err(Attempt::PortTaken(TestkitError::Exited {
                        addr: self.addr(),
                        status: format!("port answered by another process (pid {other})"),
                        log: self.log.clone(),
                        log_tail: log_tail(&self.log, log_start),
                    }));
                }
                Err(e) => e.to_string(),
            };
            if started.elapsed() >= timeout {
                return Err(Attempt::Failed(TestkitError::NotReady {
                    addr: self.addr(),
                    waited: started.elapsed(),
                    last,
                    log: self.log.clone(),
                    log_tail: log_tail(&self.log, log_start),
                }));
            }
            std::thread::sleep(pause);
            pause = (pause * 2).min(Duration::from_millis(50));
        }
    }

    /// One readiness check: `PING` must answer `PONG` (not `LOADING`), and `INFO server` must
    /// name our pid, so that a stranger on the port is not mistaken for our server.
    fn probe(&self, pid: u32) -> Result<Probe> {
        let mut conn = Connection::open(
            self.port,
            Duration::from_millis(500),
            self.tls_certs().map(Arc::as_ref),
        )?;
        if let Some(pw) = &self.opts.password {
            conn.auth(pw)?;
        }
        let pong = conn.call(&["PING"])?;
        if pong.as_str() != Some("PONG") {
            return Ok(Probe::NotYet(format!("{pong:?}")));
        }
        let info = conn.call(&["INFO", "server"])?;
        let text = info.as_str().unwrap_or_default();
        match info_field(text, "process_id").and_then(|p| p.parse::<u32>().ok()) {
            Some(p) if p == pid => Ok(Probe::Ready),
            Some(other) => Ok(Probe::Stranger(other)),
            None => Ok(Probe::NotYet(format!(
                "INFO server without process_id: {info:?}"
            ))),
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.kill();
        release_port(self.port);
    }
}

enum Probe {
    Ready,
    NotYet(String),
    Stranger(u32),
}

/// Outcome of one spawn attempt: a lost port race is retried, anything else is final.
enum Attempt {
    PortTaken(TestkitError),
    Failed(TestkitError),
}

impl From<TestkitError> for Attempt {
    fn from(e: TestkitError) -> Self {
        Attempt::Failed(e)
    }
}

fn kill_and_reap(mut child: Child) -> Result<()> {
    let pid = child.id();
    // Fails only if the child was already reaped, which `Child` never lets happen.
    let killed = child.kill();
    let waited = child.wait();
    guardian::forget_pid(pid);
    killed.map_err(|e| TestkitError::io(format!("killing redis-server pid {pid}"), e))?;
    waited.map_err(|e| TestkitError::io(format!("reaping redis-server pid {pid}"), e))?;
    Ok(())
}

fn reap_if_exited(child: &mut Option<Child>) {
    if let Some(c) = child.as_mut() {
        if let Ok(Some(_)) = c.try_wait() {
            guardian::forget_pid(c.id());
            *child = None;
        }
    }
}

/// The value of `name:value` in an `INFO` text.
pub(crate) fn info_field<'a>(info: &'a str, name: &str) -> Option<&'a str> {
    info.lines().find_map(|line| {
        line.strip_prefix(name)
            .and_then(|rest| rest.strip_prefix(':'))
            .map(str::trim)
    })
}

fn resolve_binary(opts: &ServerOptions) -> Result<PathBuf> {
    let (configured, origin) = match (&opts.binary, std::env::var_os(REDIS_SERVER_ENV)) {
        (Some(path), _) => (path.clone(), "ServerOptions::binary"),
        (None, Some(value)) if !value.is_empty() => (PathBuf::from(value), REDIS_SERVER_ENV),
        _ => return find_on_path("redis-server").ok_or(TestkitError::ServerNotFound),
    };
    let found = if configured.components().count() > 1 || configured.is_absolute() {
        configured.is_file().then(|| configured.clone())
    } else {
        find_on_path(configured.as_os_str())
    };
    found.ok_or(TestkitError::BinaryNotFound {
        path: configured,
        origin,
    })
}

fn find_on_path(name: impl AsRef<std::ffi::OsStr>) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name.as_ref()))
        .find(|candidate| candidate.is_file())
}

/// Ports handed to live `RedisServer`s of this process (killed ones included).
static PORTS: Mutex<BTreeSet<u16>> = Mutex::new(BTreeSet::new());

fn ports() -> MutexGuard<'static, BTreeSet<u16>> {
    PORTS
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn reserve_port() -> Result<u16> {
    const ATTEMPTS: u32 = 500;
    let mut rng = rand::thread_rng();
    for _ in 0..ATTEMPTS {
        let port = rng.gen_range(PORT_RANGE);
        let mut taken = ports();
        if taken.contains(&port) {
            continue;
        }
        if bindable(port) && bindable(port + CLUSTER_BUS_OFFSET) {
            taken.insert(port);
            return Ok(port);
        }
    }
    Err(TestkitError::NoFreePort { attempts: ATTEMPTS })
}

fn release_port(port: u16) {
    ports().remove(&port);
}

fn bindable(port: u16) -> bool {
    TcpListener::bind((Ipv4Addr::LOCALHOST, port)).is_ok()
}

/// The last lines of the log written after byte `from`.
fn log_tail(log: &Path, from: u64) -> String {
    let mut text = String::new();
    let read = File::open(log).and_then(|mut f| {
        f.seek(SeekFrom::Start(from))?;
        let mut bytes = Vec::new();
        f.read_to_end(&mut bytes)?;
        text = String::from_utf8_lossy(&bytes).into_owned();
        Ok(())
    });
    if let Err(e) = read {
        return format!("(could not read the log: {e})");
    }
    let lines: Vec<&str> = text.lines().collect();
    let start = lines.len().saturating_sub(LOG_TAIL_LINES);
    if lines.is_empty() {
        return "(the log is empty)".into();
    }
    lines[start..].join("\n")
}

/// Percent-encodes everything but RFC 3986 unreserved characters (for URL userinfo).
pub(crate) fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                char::from(b).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Starts `n` servers with the same options concurrently (startup is mostly waiting).
/// If any fails, the others are dropped (killed) and the first error is returned.
pub(crate) fn start_many(n: usize, opts: &ServerOptions) -> Result<Vec<RedisServer>> {
    start_each(vec![(Kind::Data, opts.clone()); n])
}

/// Starts one server per `(kind, options)` concurrently, in order.
pub(crate) fn start_each(specs: Vec<(Kind, ServerOptions)>) -> Result<Vec<RedisServer>> {
    let results: Vec<Result<RedisServer>> = std::thread::scope(|scope| {
        let handles: Vec<_> = specs
            .into_iter()
            .map(|(kind, opts)| scope.spawn(move || RedisServer::launch(kind, opts)))
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join().unwrap_or_else(|_| {
                    Err(TestkitError::io(
                        "starting redis-server",
                        std::io::Error::other("the start thread panicked"),
                    ))
                })
            })
            .collect()
    });
    results.into_iter().collect()
}
