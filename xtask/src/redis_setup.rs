//! Making sure `redis-server` is installed.
//!
//! The testkit starts real `redis-server` processes (standalone, cluster,
//! sentinel), so every command that touches Redis first calls
//! [`ensure_redis`]:
//!
//! 1. `$FREDKIT_REDIS_SERVER` (a path or a name on `PATH`) or `redis-server`
//!    on `PATH`: nothing to do.
//! 2. Otherwise, as root with `apt-get` (a fresh CI machine): `apt-get update`
//!    and `apt-get install -y redis-server redis-tools redis-sentinel`.
//!    The Debian package may try to start a system redis on 6379; where no
//!    `/usr/sbin/policy-rc.d` exists one is put in place for the duration of
//!    the install so that it does not (tests use random ports either way).
//! 3. Otherwise: print the command to run and fail.

use crate::cmd;
use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// The environment variable that points the testkit at a `redis-server`.
pub(crate) const SERVER_ENV: &str = "FREDKIT_REDIS_SERVER";

const PACKAGES: [&str; 3] = ["redis-server", "redis-tools", "redis-sentinel"];

/// Makes sure a `redis-server` binary is available, installing it with
/// `apt-get` when running as root. Returns its path.
pub(crate) fn ensure_redis() -> Result<PathBuf> {
    if let Some(path) = find_server()? {
        report(&path);
        return Ok(path);
    }
    println!("==> redis-server not found on PATH");
    if is_root() && cmd::which("apt-get".as_ref()).is_some() {
        apt_install()?;
        match find_server()? {
            Some(path) => {
                report(&path);
                Ok(path)
            }
            None => bail!("apt-get installed {PACKAGES:?} but redis-server is still not on PATH"),
        }
    } else {
        bail!(
            "redis-server is needed (the tests and benchmarks start throwaway servers).\n\
             Install it, then run this again:\n\
             \x20   Debian/Ubuntu: sudo apt-get update && sudo apt-get install -y {}\n\
             \x20   macOS:         brew install redis\n\
             or point {SERVER_ENV} at a redis-server binary.",
            PACKAGES.join(" ")
        )
    }
}

/// `$FREDKIT_REDIS_SERVER` when set (an error when it names nothing
/// executable), else `redis-server` on `PATH`.
fn find_server() -> Result<Option<PathBuf>> {
    if let Some(configured) = std::env::var_os(SERVER_ENV).filter(|v| !v.is_empty()) {
        return match cmd::which(&configured) {
            Some(path) => Ok(Some(path)),
            None => bail!(
                "{SERVER_ENV}={} is not an executable file nor a program on PATH",
                configured.to_string_lossy()
            ),
        };
    }
    Ok(cmd::which("redis-server".as_ref()))
}

fn report(path: &Path) {
    let version = cmd::output(Command::new(path).arg("--version"))
        .unwrap_or_else(|e| format!("(version unknown: {e})"));
    println!("==> redis: {} ({version})", path.display());
}

fn is_root() -> bool {
    cmd::output(Command::new("id").arg("-u")).is_ok_and(|uid| uid == "0")
}

fn apt_install() -> Result<()> {
    println!(
        "==> installing {} with apt-get (running as root)",
        PACKAGES.join(" ")
    );
    let _guard = NoServiceStart::install();

    let mut update = Command::new("apt-get");
    update.arg("update").stdin(Stdio::null());
    println!("    $ {}", cmd::display(&update));
    cmd::run(&mut update).context("apt-get update failed")?;

    let mut install = Command::new("apt-get");
    install
        .env("DEBIAN_FRONTEND", "noninteractive")
        .args(["install", "-y", "--no-install-recommends"])
        .args(PACKAGES)
        .stdin(Stdio::null());
    println!("    $ {}", cmd::display(&install));
    cmd::run(&mut install).context("apt-get install failed")?;
    Ok(())
}

/// Puts a `policy-rc.d` that forbids starting services in place, if none
/// exists, and removes it again when dropped.
struct NoServiceStart {
    path: Option<PathBuf>,
}

impl NoServiceStart {
    const PATH: &'static str = "/usr/sbin/policy-rc.d";

    fn install() -> Self {
        let path = PathBuf::from(Self::PATH);
        if path.exists() || !Path::new("/usr/sbin").is_dir() {
            return Self { path: None };
        }
        let script = "#!/bin/sh\n# written by `cargo xtask` for the duration of an apt-get install\nexit 101\n";
        let written = std::fs::write(&path, script).and_then(|()| {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))
        });
        match written {
            Ok(()) => {
                println!(
                    "    (temporary {} so the package does not start a system redis)",
                    Self::PATH
                );
                Self { path: Some(path) }
            }
            Err(e) => {
                println!("    (could not write {}: {e}; a system redis may start on 6379, which is harmless)", Self::PATH);
                Self { path: None }
            }
        }
    }
}

impl Drop for NoServiceStart {
    fn drop(&mut self) {
        if let Some(path) = self.path.take() {
            if let Err(e) = std::fs::remove_file(&path) {
                eprintln!("xtask: could not remove {}: {e}", path.display());
            }
        }
    }
}

/// Starts installing Chromium (for the OrderFlow dashboard test) in the
/// background when it is missing and we are root with `apt-get`; its output
/// goes to `log`. `None` when there is nothing to do, saying why.
pub(crate) fn start_chromium_install(log: &Path) -> Option<std::thread::JoinHandle<Result<()>>> {
    if ["chromium", "chromium-browser", "google-chrome"]
        .iter()
        .any(|b| cmd::which(b.as_ref()).is_some())
    {
        return None;
    }
    if !(is_root() && cmd::which("apt-get".as_ref()).is_some()) {
        println!("==> chromium is missing and this is not root with apt-get: the dashboard test will be skipped (apt-get install chromium)");
        return None;
    }
    println!(
        "==> installing chromium in the background for the dashboard test (log: {})",
        log.display()
    );
    let log = log.to_path_buf();
    Some(std::thread::spawn(move || {
        let out = std::fs::File::create(&log)?;
        let mut install = Command::new("apt-get");
        install
            .env("DEBIAN_FRONTEND", "noninteractive")
            .args(["install", "-y", "-q", "--no-install-recommends", "chromium"])
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out);
        let status = install.status()?;
        anyhow::ensure!(
            status.success(),
            "apt-get install chromium failed ({status}); see {}",
            log.display()
        );
        Ok(())
    }))
}
