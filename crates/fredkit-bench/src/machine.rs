//! The machine a run was taken on.

use fred::prelude::*;
use fred::types::InfoKind;
use std::path::Path;

/// What we know about the machine and the server.
#[derive(Debug, Default)]
pub(crate) struct Machine {
    /// Logical CPUs available to us.
    pub(crate) cores: usize,
    /// `model name` from /proc/cpuinfo.
    pub(crate) cpu: Option<String>,
    /// MemTotal in MiB.
    pub(crate) mem_mb: Option<u64>,
    /// PRETTY_NAME from /etc/os-release.
    pub(crate) os: Option<String>,
    /// The kernel release.
    pub(crate) kernel: Option<String>,
    /// `redis_version` from INFO server.
    pub(crate) redis_version: Option<String>,
    /// fred's version from Cargo.lock.
    pub(crate) fred_version: Option<String>,
}

impl Machine {
    /// Reads what the OS tells about itself.
    pub(crate) fn detect(workspace_root: &Path) -> Self {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
        let os_release = std::fs::read_to_string("/etc/os-release").unwrap_or_default();
        let lock = std::fs::read_to_string(workspace_root.join("Cargo.lock")).unwrap_or_default();
        Self {
            cores: std::thread::available_parallelism().map_or(1, usize::from),
            cpu: field(&cpuinfo, "model name", ':'),
            mem_mb: field(&meminfo, "MemTotal", ':').and_then(|v| {
                v.trim_end_matches("kB")
                    .trim()
                    .parse::<u64>()
                    .ok()
                    .map(|kb| kb / 1024)
            }),
            os: field(&os_release, "PRETTY_NAME", '=').map(|v| v.trim_matches('"').to_string()),
            kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
                .ok()
                .map(|s| s.trim().to_string()),
            redis_version: None,
            fred_version: lock_version(&lock, "fred"),
        }
    }

    /// Asks the server for its version.
    pub(crate) async fn probe_redis(&mut self, client: &Client) {
        if let Ok(info) = client.info::<String>(Some(InfoKind::Server)).await {
            self.redis_version = field(&info, "redis_version", ':');
        }
    }

    /// `7.0.15` -> 70015, for the JSON (numbers only).
    pub(crate) fn redis_version_num(&self) -> Option<f64> {
        let v = self.redis_version.as_deref()?;
        let mut parts = v.split('.').map(|p| p.parse::<u32>().ok());
        let major = parts.next()??;
        let minor = parts.next().flatten().unwrap_or(0);
        let patch = parts.next().flatten().unwrap_or(0);
        Some(f64::from(major * 10_000 + minor * 100 + patch))
    }

    /// `key: value` lines.
    pub(crate) fn lines(&self) -> Vec<(&'static str, String)> {
        let unknown = || "unknown".to_string();
        vec![
            ("cpu", self.cpu.clone().unwrap_or_else(unknown)),
            ("cores", self.cores.to_string()),
            (
                "memory",
                self.mem_mb
                    .map_or_else(unknown, |m| format!("{:.1} GiB", m as f64 / 1024.0)),
            ),
            ("os", self.os.clone().unwrap_or_else(unknown)),
            ("kernel", self.kernel.clone().unwrap_or_else(unknown)),
            ("redis", self.redis_version.clone().unwrap_or_else(unknown)),
            ("fred", self.fred_version.clone().unwrap_or_else(unknown)),
        ]
    }
}

/// The value of the first `key<sep>value` line.
fn field(text: &str, key: &str, sep: char) -> Option<String> {
    text.lines().find_map(|line| {
        let (k, v) = line.split_once(sep)?;
        (k.trim() == key).then(|| v.trim().to_string())
    })
}

/// The version of package `name` in a Cargo.lock.
/// The version of `name` in Cargo.lock; with several (fred 10 for us, fred 9 under some
/// peers), the one built from a path (no `source` line: our vendored fred), else the last.
fn lock_version(lock: &str, name: &str) -> Option<String> {
    let wanted = format!("name = \"{name}\"");
    let mut found = None;
    for block in lock.split("[[package]]") {
        let mut lines = block.lines().map(str::trim).filter(|l| !l.is_empty());
        if lines.next() != Some(wanted.as_str()) {
            continue;
        }
        let Some(version) = lines.next().and_then(|l| l.strip_prefix("version = ")) else {
            continue;
        };
        let version = version.trim_matches('"').to_string();
        if !block.contains("\nsource = ") {
            return Some(version);
        }
        found = Some(version);
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_fields_and_versions() {
        assert_eq!(
            field("a: 1\nmodel name\t: Fancy CPU\n", "model name", ':').as_deref(),
            Some("Fancy CPU")
        );
        let m = Machine {
            redis_version: Some("7.0.15".into()),
            ..Machine::default()
        };
        assert_eq!(m.redis_version_num(), Some(70015.0));
        let lock = "[[package]]\nname = \"fred\"\nversion = \"10.1.0\"\n";
        assert_eq!(lock_version(lock, "fred").as_deref(), Some("10.1.0"));
        let two = "[[package]]\nname = \"fred\"\nversion = \"9.4.0\"\nsource = \"registry+x\"\n\n\
                   [[package]]\nname = \"fred\"\nversion = \"10.1.0\"\n";
        assert_eq!(lock_version(two, "fred").as_deref(), Some("10.1.0"));
    }
}
