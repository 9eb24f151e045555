//! The BullMQ contender of the `jobs` suite: node running
//! `node/bullmq_e2e.mjs` against the bench's server, driven over stdin/stdout.
//!
//! Nothing here is a build or CI dependency: at bench time the script, its
//! `package.json` and `package-lock.json` (compiled into this binary) are
//! written to `target/bench/bullmq`, `npm ci` installs the locked BullMQ and
//! ioredis there when they are not installed yet, and the script is started
//! once per run. Without node or npm, or when the install fails (no
//! registry), [`BullMq::start`] returns the reason and the suite skips the
//! contender.

use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};

const SCRIPT: &str = include_str!("../node/bullmq_e2e.mjs");
const PACKAGE_JSON: &str = include_str!("../node/package.json");
const PACKAGE_LOCK: &str = include_str!("../node/package-lock.json");
/// Written after a successful `npm ci`: the lock it installed.
const STAMP: &str = "installed-lock.json";

/// How the node side runs its workers and producers.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Shape {
    /// BullMQ `Worker`s.
    pub(crate) workers: usize,
    /// Each worker's `concurrency`.
    pub(crate) concurrency: usize,
    /// `Queue.add` calls outstanding at once.
    pub(crate) in_flight: usize,
    /// `removeOnComplete: { count }`.
    pub(crate) keep_completed: u64,
}

/// A running node process with BullMQ workers, ready for rounds.
pub(crate) struct BullMq {
    child: Child,
    stdin: ChildStdin,
    lines: Lines<BufReader<ChildStdout>>,
    /// The BullMQ version node loaded.
    pub(crate) version: String,
}

/// One round as node measured it.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Round {
    /// Jobs enqueued and completed.
    pub(crate) jobs: u64,
    /// First `add` to the last `completed` event, seconds.
    pub(crate) elapsed: Duration,
}

async fn version_of(program: &str) -> Result<String> {
    let out = Command::new(program)
        .arg("--version")
        .stdin(Stdio::null())
        .output()
        .await
        .with_context(|| format!("`{program}` not found on PATH"))?;
    if !out.status.success() {
        bail!("`{program} --version` failed ({})", out.status);
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// Writes the node folder and installs the locked packages unless the same
/// lock is installed already. Returns the folder.
async fn prepare(dir: &Path) -> Result<()> {
    tokio::fs::create_dir_all(dir)
        .await
        .with_context(|| format!("could not create {}", dir.display()))?;
    for (name, text) in [
        ("bullmq_e2e.mjs", SCRIPT),
        ("package.json", PACKAGE_JSON),
        ("package-lock.json", PACKAGE_LOCK),
    ] {
        let path = dir.join(name);
        tokio::fs::write(&path, text)
            .await
            .with_context(|| format!("could not write {}", path.display()))?;
    }
    let stamp = dir.join(STAMP);
    let installed = tokio::fs::read_to_string(&stamp).await.unwrap_or_default();
    if installed == PACKAGE_LOCK && dir.join("node_modules/bullmq/package.json").exists() {
        return Ok(());
    }
    println!("   installing BullMQ into {} (npm ci) ...", dir.display());
    let out = Command::new("npm")
        .args(["ci", "--no-audit", "--no-fund", "--loglevel=error"])
        .current_dir(dir)
        .stdin(Stdio::null())
        .output()
        .await
        .context("could not run npm")?;
    if !out.status.success() {
        bail!(
            "`npm ci` in {} failed ({}): {}",
            dir.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    tokio::fs::write(&stamp, PACKAGE_LOCK)
        .await
        .with_context(|| format!("could not write {}", stamp.display()))?;
    Ok(())
}

impl BullMq {
    /// The folder BullMQ is installed in: `<target>/bench/bullmq`.
    pub(crate) fn dir() -> PathBuf {
        crate::target_dir(&crate::workspace_root())
            .join("bench")
            .join("bullmq")
    }

    /// Installs (when needed) and starts the node side on `queue`. An error
    /// is a reason to skip the contender, not to fail the suite.
    pub(crate) async fn start(url: &str, queue: &str, shape: Shape) -> Result<Self> {
        let node = version_of("node").await?;
        version_of("npm").await?;
        let dir = Self::dir();
        prepare(&dir).await?;
        let mut child = Command::new("node")
            .arg("bullmq_e2e.mjs")
            .arg(url)
            .arg(queue)
            .arg(shape.workers.to_string())
            .arg(shape.concurrency.to_string())
            .arg(shape.in_flight.to_string())
            .arg(shape.keep_completed.to_string())
            .current_dir(&dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .context("could not start node")?;
        let stdin = child.stdin.take().context("node's stdin")?;
        let stdout = child.stdout.take().context("node's stdout")?;
        let mut lines = BufReader::new(stdout).lines();
        let ready = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
            .await
            .context("node did not report ready within 30 s")?
            .context("reading node's output")?
            .context("node exited before it was ready")?;
        let v: serde_json::Value = serde_json::from_str(&ready)
            .with_context(|| format!("node's first line is not JSON: {ready}"))?;
        if v.get("ready").and_then(serde_json::Value::as_bool) != Some(true) {
            bail!("node did not start: {ready}");
        }
        let version = v
            .get("bullmq")
            .and_then(serde_json::Value::as_str)
            .unwrap_or("?")
            .to_string();
        println!("   BullMQ {version} on node {node}");
        Ok(Self {
            child,
            stdin,
            lines,
            version,
        })
    }

    /// Enqueues `jobs` jobs and waits until all are completed (node's timing).
    pub(crate) async fn round(&mut self, jobs: u64) -> Result<Round> {
        let req = serde_json::json!({ "jobs": jobs }).to_string() + "\n";
        self.stdin.write_all(req.as_bytes()).await?;
        self.stdin.flush().await?;
        let line = tokio::time::timeout(Duration::from_secs(120), self.lines.next_line())
            .await
            .context("BullMQ round took over 120 s")??
            .context("node exited during a round")?;
        let v: serde_json::Value = serde_json::from_str(&line)
            .with_context(|| format!("node's answer is not JSON: {line}"))?;
        if let Some(e) = v.get("error") {
            bail!("BullMQ round failed: {e}");
        }
        let elapsed = v
            .get("elapsed_s")
            .and_then(serde_json::Value::as_f64)
            .filter(|s| s.is_finite() && *s > 0.0)
            .with_context(|| format!("no elapsed_s in {line}"))?;
        Ok(Round {
            jobs,
            elapsed: Duration::from_secs_f64(elapsed),
        })
    }

    /// Closes node's stdin (it closes its workers and exits); kills it after 10 s.
    pub(crate) async fn stop(mut self) {
        drop(self.stdin);
        if tokio::time::timeout(Duration::from_secs(10), self.child.wait())
            .await
            .is_err()
        {
            let _ = self.child.kill().await;
        }
    }
}
