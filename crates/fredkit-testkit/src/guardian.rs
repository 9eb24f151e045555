//! The orphan guardian: a `/bin/sh` helper that kills our servers when the test process dies.
//!
//! `Drop` kills a server when its owner goes away, but statics are never dropped, and a test
//! process that is SIGKILLed or calls `std::process::exit` runs no destructors at all. So on
//! first use we spawn one helper per test process whose stdin is a pipe from us, and tell it
//! every server pid and temp dir. When our process dies, for whatever reason, the kernel closes
//! the pipe; the helper reads EOF, `kill -9`s the pids it still holds and removes the dirs.
//! It runs in its own process group so that a Ctrl-C aimed at the test does not kill it first.

use std::collections::BTreeSet;
use std::io::Write;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Mutex, MutexGuard};

use crate::error::{Result, TestkitError};

/// Reads `pid N`, `forget N` and `dir PATH` lines until EOF, then kills and removes.
const SCRIPT: &str = r#"
pids=''
dirs=''
while IFS= read -r line; do
  case $line in
    'pid '*) pids="$pids ${line#pid }" ;;
    'forget '*)
      gone=${line#forget }
      keep=''
      for p in $pids; do [ "$p" = "$gone" ] || keep="$keep $p"; done
      pids=$keep ;;
    'dir '*) dirs="$dirs
${line#dir }" ;;
  esac
done
[ -n "$pids" ] && kill -9 $pids 2>/dev/null
printf '%s\n' "$dirs" | while IFS= read -r d; do
  [ -n "$d" ] || continue
  rm -rf -- "$d" 2>/dev/null
  # A process killed mid-write may still create a file: try once more.
  if [ -e "$d" ]; then sleep 0.2; rm -rf -- "$d" 2>/dev/null; fi
done
"#;

struct Helper {
    // Kept so the handle lives as long as the pipe; the helper is never waited for.
    _child: Child,
    stdin: ChildStdin,
}

#[derive(Default)]
struct State {
    helper: Option<Helper>,
    // What the helper must know, so that a replacement helper can be told everything again.
    pids: BTreeSet<u32>,
    dirs: Vec<PathBuf>,
}

static STATE: Mutex<State> = Mutex::new(State {
    helper: None,
    pids: BTreeSet::new(),
    dirs: Vec::new(),
});

fn state() -> MutexGuard<'static, State> {
    // A panic while holding the lock leaves the state consistent enough: keep going.
    STATE
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn spawn_helper() -> std::io::Result<Helper> {
    let mut child = Command::new("/bin/sh")
        .arg("-c")
        .arg(SCRIPT)
        .stdin(Stdio::piped())
        // Never hold the test's stdout/stderr: a parent reading them would wait for us.
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0)
        .spawn()?;
    let stdin = child
        .stdin
        .take()
        .ok_or_else(|| std::io::Error::other("the helper's stdin was not piped"))?;
    Ok(Helper {
        _child: child,
        stdin,
    })
}

impl State {
    /// Writes `line` to the helper, replacing a dead helper (and replaying what it knew) once.
    fn send(&mut self, line: &str) -> std::io::Result<()> {
        if let Some(helper) = &mut self.helper {
            if helper.stdin.write_all(line.as_bytes()).is_ok() && helper.stdin.flush().is_ok() {
                return Ok(());
            }
        }
        let mut helper = spawn_helper()?;
        let mut replay = String::new();
        for pid in &self.pids {
            replay.push_str(&format!("pid {pid}\n"));
        }
        for dir in &self.dirs {
            replay.push_str(&format!("dir {}\n", dir.display()));
        }
        replay.push_str(line);
        helper.stdin.write_all(replay.as_bytes())?;
        helper.stdin.flush()?;
        self.helper = Some(helper);
        Ok(())
    }
}

/// Starts the helper now if it is not running yet, so that failures surface before a server
/// is spawned.
pub(crate) fn ensure_started() -> Result<()> {
    let mut st = state();
    if st.helper.is_none() {
        st.helper = Some(spawn_helper().map_err(|source| TestkitError::Guardian { source })?);
    }
    Ok(())
}

/// Asks the helper to `kill -9 pid` when this process dies.
pub(crate) fn watch_pid(pid: u32) -> Result<()> {
    let mut st = state();
    st.send(&format!("pid {pid}\n"))
        .map_err(|source| TestkitError::Guardian { source })?;
    st.pids.insert(pid);
    Ok(())
}

/// Tells the helper that `pid` was reaped, so that a recycled pid is never killed.
pub(crate) fn forget_pid(pid: u32) {
    let mut st = state();
    st.pids.remove(&pid);
    // Best effort: if the helper is gone, a replacement is told the remaining pids only.
    let _ = st.send(&format!("forget {pid}\n"));
}

/// Asks the helper to remove `dir` when this process dies (after killing the servers).
pub(crate) fn watch_dir(dir: &Path) -> Result<()> {
    let text = dir.display().to_string();
    if text.contains('\n') {
        // Cannot be expressed in the line protocol; the dir is still removed on Drop.
        return Ok(());
    }
    let mut st = state();
    st.send(&format!("dir {text}\n"))
        .map_err(|source| TestkitError::Guardian { source })?;
    st.dirs.push(dir.to_path_buf());
    Ok(())
}
