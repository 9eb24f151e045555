//! Servers never outlive the test process, even when it dies without running destructors.
//!
//! Each test re-runs this test binary as a child process that starts servers (a standalone
//! server that is also restarted, a cluster, and the static shared server), prints their
//! pids and dirs, and then dies without dropping them: by `std::process::exit`, or by the
//! parent's SIGKILL. The parent then checks that every pid is gone and every dir removed.

// Helpers outside #[test] functions are test code too.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

use fredkit_testkit::{shared_url, ClusterOptions, RedisCluster, RedisServer, Topology};

const MODE_ENV: &str = "FREDKIT_TESTKIT_ORPHAN_CHILD";
/// Bounds the wait for the guardian; not a timing assertion.
const DEADLINE: Duration = Duration::from_secs(10);

/// The pid of whatever answers on `url`'s port, from `INFO server`.
fn pid_behind(url: &str) -> u32 {
    let port = url.rsplit(':').next().unwrap();
    let mut stream = TcpStream::connect(format!("127.0.0.1:{port}")).unwrap();
    stream.write_all(b"INFO server\r\n").unwrap();
    let mut text = String::new();
    let mut buf = [0; 4096];
    while !text.contains("process_id:") || !text.ends_with("\r\n") {
        let n = stream.read(&mut buf).unwrap();
        assert!(n > 0, "connection closed: {text}");
        text.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
    let line = text.lines().find(|l| l.starts_with("process_id:")).unwrap();
    line["process_id:".len()..].trim().parse().unwrap()
}

/// Does nothing in a normal run; in a child started by the tests below, starts servers,
/// reports them, and dies without dropping them.
#[test]
fn child_process_that_dies_holding_servers() {
    let Ok(mode) = std::env::var(MODE_ENV) else {
        return;
    };
    let mut server = RedisServer::start().unwrap();
    let first_pid = server.pid().unwrap();
    server.kill().unwrap();
    server.restart().unwrap();
    let cluster = RedisCluster::start(ClusterOptions::default()).unwrap();
    let shared = shared_url(Topology::Standalone).unwrap();

    let mut pids = vec![server.pid().unwrap(), pid_behind(&shared)];
    pids.extend(cluster.nodes().iter().map(|n| n.pid().unwrap()));
    assert!(!pids.contains(&first_pid));
    let mut dirs = vec![server.dir().to_path_buf()];
    dirs.extend(cluster.nodes().iter().map(|n| n.dir().to_path_buf()));
    let pids: Vec<String> = pids.iter().map(u32::to_string).collect();
    let dirs: Vec<String> = dirs.iter().map(|d| d.display().to_string()).collect();
    let mut out = std::io::stdout().lock();
    writeln!(out, "ORPHAN-PIDS {}", pids.join(" ")).unwrap();
    writeln!(out, "ORPHAN-DIRS {}", dirs.join(" ")).unwrap();
    writeln!(out, "ORPHAN-READY").unwrap();
    out.flush().unwrap();
    drop(out);

    // Wait until the parent has checked that everything runs. In "sigkill" mode the parent
    // kills us during this read; if it dies instead, EOF ends the test normally.
    let mut line = String::new();
    std::io::stdin().read_line(&mut line).unwrap();
    if mode == "exit" && line.trim() == "go" {
        std::process::exit(0);
    }
}

struct Reported {
    pids: Vec<u32>,
    dirs: Vec<PathBuf>,
}

/// The child test process; killed if the parent test fails before it is done with it.
struct ChildTest(Child);

impl Drop for ChildTest {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The full name of the child test in this binary, for `--exact`.
fn child_test() -> String {
    fredkit_testkit::test_name!(child_process_that_dies_holding_servers)
}

fn spawn_child(mode: &str) -> (ChildTest, BufReader<ChildStdout>, Reported) {
    let mut command = Command::new(std::env::current_exe().unwrap());
    // The child must start (and orphan) its own shared servers, not reuse the ones a test
    // runner hands down to the whole run.
    for (_, var) in fredkit_testkit::SHARED_URL_ENV {
        command.env_remove(var);
    }
    let mut child = ChildTest(
        command
            .args([&child_test(), "--exact", "--nocapture", "--test-threads=1"])
            .env(MODE_ENV, mode)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let mut stdout = BufReader::new(child.0.stdout.take().unwrap());
    let mut reported = Reported {
        pids: Vec::new(),
        dirs: Vec::new(),
    };
    loop {
        let mut line = String::new();
        assert!(
            stdout.read_line(&mut line).unwrap() > 0,
            "the child ended before reporting its servers"
        );
        let line = line.trim_end();
        // libtest may print "test NAME ... " before our output on the same line.
        if let Some((_, pids)) = line.split_once("ORPHAN-PIDS ") {
            reported.pids = pids.split(' ').map(|p| p.parse().unwrap()).collect();
        } else if let Some((_, dirs)) = line.split_once("ORPHAN-DIRS ") {
            reported.dirs = dirs.split(' ').map(PathBuf::from).collect();
        } else if line.ends_with("ORPHAN-READY") {
            break;
        }
    }
    // Two standalone servers and three cluster nodes.
    assert_eq!(reported.pids.len(), 5);
    for &pid in &reported.pids {
        assert!(is_redis_alive(pid), "pid {pid} should be running");
    }
    for dir in &reported.dirs {
        assert!(dir.is_dir(), "{} should exist", dir.display());
    }
    (child, stdout, reported)
}

/// True while `pid` is a live (not zombie) redis-server; a recycled pid counts as gone.
fn is_redis_alive(pid: u32) -> bool {
    let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
        return false;
    };
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    let state = stat.rsplit(')').next().unwrap_or("").trim_start();
    String::from_utf8_lossy(&cmdline).contains("redis-server") && !state.starts_with('Z')
}

fn assert_all_gone(reported: &Reported) {
    let started = Instant::now();
    loop {
        let alive: Vec<u32> = reported
            .pids
            .iter()
            .copied()
            .filter(|&p| is_redis_alive(p))
            .collect();
        let left: Vec<&Path> = reported
            .dirs
            .iter()
            .map(PathBuf::as_path)
            .filter(|d| d.exists())
            .collect();
        if alive.is_empty() && left.is_empty() {
            return;
        }
        assert!(
            started.elapsed() < DEADLINE,
            "orphans after {DEADLINE:?}: pids {alive:?}, dirs {left:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Kills processes and starts clusters: nextest runs `faults::` tests one at a time.
mod faults {
    use super::*;

    #[test]
    fn servers_die_with_the_test_process_even_on_exit_without_drop() {
        let (mut child, mut stdout, reported) = spawn_child("exit");
        child.0.stdin.take().unwrap().write_all(b"go\n").unwrap();
        let mut rest = String::new();
        stdout.read_to_string(&mut rest).unwrap();
        let status = child.0.wait().unwrap();
        assert!(status.success(), "child failed: {status}\n{rest}");
        assert_all_gone(&reported);
    }

    #[test]
    fn servers_die_with_the_test_process_even_when_it_is_sigkilled() {
        let (mut child, _stdout, reported) = spawn_child("sigkill");
        child.0.kill().unwrap();
        child.0.wait().unwrap();
        assert_all_gone(&reported);
    }
}
