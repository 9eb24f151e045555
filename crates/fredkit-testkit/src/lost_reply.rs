//! Losing a reply on purpose: the server runs a command, then the
//! connection it came on is killed before the reply leaves, so fred sends
//! the command again on a new connection (see [`with_lost_reply`]).

use std::future::Future;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

use crate::error::{Result, TestkitError};
use crate::resp::Reply;
use crate::server::RedisServer;

/// How long each step may take before the control gives up.
const STEP_DEADLINE: Duration = Duration::from_secs(20);
/// How long the operation may take after the server resumed.
const FINISH_DEADLINE: Duration = Duration::from_secs(30);

/// Runs `op`, which makes a client send one command of at least `min_bytes`
/// bytes to `server`, so that the server executes it and the reply is lost
/// with its connection; returns what `op` returns (normally after fred sent
/// the command again on a new connection).
///
/// How, deterministically (Linux only: it reads `/proc`):
/// 1. a killer connection that sends nothing is opened and waited for in
///    `CLIENT LIST`;
/// 2. the server is frozen (SIGSTOP) and waited for in state `T`
///    (`/proc/<pid>/stat`): SIGSTOP takes effect only when the process is
///    next scheduled;
/// 3. `op` is spawned; once a connection other than the killer has at least
///    `min_bytes` waiting in the server socket's receive queue
///    (`/proc/net/tcp`) and the queue has stopped growing for 100 ms (fred
///    may write a command in two segments), the killer writes `CLIENT KILL
///    TYPE normal SKIPME yes` and waits until that is queued too;
/// 4. the server resumes. It serves the sockets in the order their data
///    arrived: it runs the command, then kills every normal connection —
///    the command's before its reply was written.
///
/// Choose `min_bytes` above anything else the client may send meanwhile (a
/// watchdog `PING` is 14 bytes). Give the client a command timeout of several
/// seconds (e.g. `?command_timeout=10s`): the command waits out the freeze, the
/// kill and the reconnection, which can take more than the default 1 s on a
/// loaded machine. Count the command's runs yourself
/// (`INFO commandstats`, `SLOWLOG`) to prove it ran twice. Every normal
/// connection of the server is killed, not only the command's.
///
/// # Errors
/// [`TestkitError::Timeout`] when a step does not happen within 20 s (the
/// server is resumed first) or `op` does not finish within 30 s of the
/// resume; [`TestkitError::Io`] when `/proc` or the killer connection
/// fails; [`TestkitError::Protocol`] when `CLIENT KILL` killed nothing;
/// the errors of [`RedisServer::pause`], [`RedisServer::resume`] and
/// [`RedisServer::command`].
pub async fn with_lost_reply<T: Send + 'static>(
    server: &RedisServer,
    min_bytes: u64,
    op: impl Future<Output = T> + Send + 'static,
) -> Result<T> {
    let port = server.port();
    let io = |context: &str| {
        let context = context.to_string();
        move |source| TestkitError::Io { context, source }
    };
    // The killer sends nothing before its CLIENT KILL: a socket that was
    // readable in the server's last event-loop turn may still sit at the
    // head of its (level-triggered) epoll ready list and be served first.
    let killer = TcpStream::connect(("127.0.0.1", port))
        .await
        .map_err(io("connecting the killer connection"))?;
    let killer_port = killer
        .local_addr()
        .map_err(io("the killer connection's address"))?
        .port();
    let mut killer = BufReader::new(killer);
    let listed = format!("addr=127.0.0.1:{killer_port} ");
    poll("the killer connection to be accepted", || async {
        match server.command(&["CLIENT", "LIST"])? {
            Reply::Bulk(Some(list)) if String::from_utf8_lossy(&list).contains(&listed) => Ok(None),
            other => Ok(Some(format!("{other:?}"))),
        }
    })
    .await?;

    server.pause()?;
    let frozen = async {
        let stat = format!("/proc/{}/stat", server.pid().unwrap_or(0));
        poll("the server to stop (SIGSTOP)", || async {
            let text = std::fs::read_to_string(&stat).map_err(io("reading /proc/<pid>/stat"))?;
            let state = text
                .rsplit(')')
                .next()
                .and_then(|rest| rest.split_whitespace().next())
                .unwrap_or("");
            Ok((state != "T" && state != "t").then(|| text.clone()))
        })
        .await?;
        let task = tokio::spawn(op);
        let queued = async {
            poll(
                "the operation's command to reach the frozen server",
                || async {
                    let q = receive_queues(port)?;
                    Ok((!q
                        .iter()
                        .any(|(p, rx)| *p != killer_port && *rx >= min_bytes))
                    .then(|| format!("{q:?}")))
                },
            )
            .await?;
            let command_bytes = |q: Vec<(u16, u64)>| {
                q.into_iter()
                    .filter(|(p, _)| *p != killer_port)
                    .map(|(_, rx)| rx)
                    .max()
                    .unwrap_or(0)
            };
            let mut seen = command_bytes(receive_queues(port)?);
            let mut stable_since = tokio::time::Instant::now();
            while stable_since.elapsed() < Duration::from_millis(100) {
                tokio::time::sleep(Duration::from_millis(10)).await;
                let now = command_bytes(receive_queues(port)?);
                if now != seen {
                    seen = now;
                    stable_since = tokio::time::Instant::now();
                }
            }
            killer
                .get_mut()
                .write_all(&resp(&[
                    "CLIENT", "KILL", "TYPE", "normal", "SKIPME", "yes",
                ]))
                .await
                .map_err(io("writing CLIENT KILL on the killer connection"))?;
            poll("CLIENT KILL to be queued", || async {
                let q = receive_queues(port)?;
                Ok((!q.iter().any(|(p, rx)| *p == killer_port && *rx > 0))
                    .then(|| format!("{q:?}")))
            })
            .await
        }
        .await;
        if let Err(e) = queued {
            task.abort();
            return Err(e);
        }
        Ok(task)
    }
    .await;
    // Resume whatever happened, so that no error leaves the server frozen.
    server.resume()?;
    let task = frozen?;

    let mut line = String::new();
    killer
        .read_line(&mut line)
        .await
        .map_err(io("reading CLIENT KILL's reply"))?;
    let killed: i64 = line.trim_start_matches(':').trim().parse().unwrap_or(0);
    if killed < 1 {
        return Err(TestkitError::Protocol {
            addr: server.addr(),
            detail: format!("CLIENT KILL TYPE normal killed nothing: {}", line.trim()),
        });
    }
    match tokio::time::timeout(FINISH_DEADLINE, task).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(join)) => Err(TestkitError::Io {
            context: "the operation's task panicked or was cancelled".into(),
            source: std::io::Error::other(join.to_string()),
        }),
        Err(_) => Err(TestkitError::Timeout {
            what: "the operation to finish after its connection was killed".into(),
            waited: FINISH_DEADLINE,
            last: "still running".into(),
        }),
    }
}

/// Polls `check` every 2 ms until it returns `Ok(None)`; `Ok(Some(seen))`
/// means "not yet", with what was seen.
async fn poll<F, Fut>(what: &str, mut check: F) -> Result<()>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<Option<String>>>,
{
    let deadline = tokio::time::Instant::now() + STEP_DEADLINE;
    loop {
        let last = match check().await? {
            None => return Ok(()),
            Some(seen) => seen,
        };
        if tokio::time::Instant::now() >= deadline {
            return Err(TestkitError::Timeout {
                what: what.to_string(),
                waited: STEP_DEADLINE,
                last,
            });
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// Established connections to `port` on this machine (server side): each
/// peer's port and the bytes waiting in its receive queue.
fn receive_queues(port: u16) -> Result<Vec<(u16, u64)>> {
    let mut out = Vec::new();
    for file in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(file) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() < 5 || f[3] != "01" {
                continue;
            }
            let port_of = |a: &str| {
                a.rsplit(':')
                    .next()
                    .and_then(|p| u16::from_str_radix(p, 16).ok())
            };
            let rx = f[4]
                .split(':')
                .nth(1)
                .and_then(|r| u64::from_str_radix(r, 16).ok());
            if let (Some(local), Some(peer), Some(rx)) = (port_of(f[1]), port_of(f[2]), rx) {
                if local == port {
                    out.push((peer, rx));
                }
            }
        }
    }
    Ok(out)
}

fn resp(args: &[&str]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", args.len()).into_bytes();
    for a in args {
        out.extend_from_slice(format!("${}\r\n{a}\r\n", a.len()).as_bytes());
    }
    out
}
