//! Commands the server ran, from `INFO commandstats`, and their deltas.
//!
//! Redis counts every command it executes, including those a Lua script
//! calls (`EVALSHA` is counted once, and each `redis.call` inside it once
//! more), so a delta is the server's whole work in commands, not the client's
//! round trips; [`Delta::scripts`] counts the script calls among them.
//! [`Delta::server_cpu_us`] is the CPU time redis-server used meanwhile
//! (`INFO cpu`, user + system): the whole cost on the server, protocol
//! parsing and replies included.

use anyhow::Result;
use fred::prelude::*;
use std::collections::BTreeMap;

/// Calls per command name (`get`, `evalsha`, `client|setname`, ...), and
/// the server's CPU time in microseconds.
#[derive(Clone, Debug, Default)]
pub(crate) struct Snapshot(BTreeMap<String, u64>, u64);

/// Reads `INFO commandstats` and `INFO cpu`.
pub(crate) async fn snapshot(client: &Client) -> Result<Snapshot> {
    let text: String = client
        .info(Some(fred::types::InfoKind::CommandStats))
        .await?;
    let cpu: String = client.info(Some(fred::types::InfoKind::Cpu)).await?;
    let mut s = parse(&text);
    s.1 = cpu_us(&cpu);
    Ok(s)
}

/// `used_cpu_user` + `used_cpu_sys` (seconds, to the microsecond) in µs.
fn cpu_us(text: &str) -> u64 {
    let secs = |key: &str| {
        text.lines()
            .find_map(|l| l.trim().strip_prefix(key))
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    ((secs("used_cpu_user:") + secs("used_cpu_sys:")) * 1e6).round() as u64
}

/// This process's CPU time (user + system, all threads) in µs, from
/// `/proc/self/stat` (10 ms resolution: USER_HZ is 100 on Linux); `None`
/// where there is no procfs.
pub(crate) fn process_cpu_us() -> Option<u64> {
    stat_cpu_us("/proc/self/stat")
}

/// The calling thread's CPU time in µs, like [`process_cpu_us`]
/// (`/proc/thread-self/stat`).
pub(crate) fn thread_cpu_us() -> Option<u64> {
    stat_cpu_us("/proc/thread-self/stat")
}

fn stat_cpu_us(path: &str) -> Option<u64> {
    let stat = std::fs::read_to_string(path).ok()?;
    // pid (comm) state ppid ... : utime and stime are fields 14 and 15,
    // i.e. the 12th and 13th after the closing parenthesis of comm.
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut it = rest.split_whitespace().skip(11);
    let utime: u64 = it.next()?.parse().ok()?;
    let stime: u64 = it.next()?.parse().ok()?;
    Some((utime + stime) * 10_000)
}

fn parse(text: &str) -> Snapshot {
    let mut map = BTreeMap::new();
    for line in text.lines() {
        // cmdstat_get:calls=12,usec=3,usec_per_call=0.25,...
        let Some(rest) = line.trim().strip_prefix("cmdstat_") else {
            continue;
        };
        let Some((name, stats)) = rest.split_once(':') else {
            continue;
        };
        let calls = stats
            .split(',')
            .find_map(|kv| kv.strip_prefix("calls="))
            .and_then(|v| v.parse::<u64>().ok());
        if let Some(calls) = calls {
            map.insert(name.to_string(), calls);
        }
    }
    Snapshot(map, 0)
}

/// Commands run between two snapshots, without the `INFO` calls that took
/// them.
#[derive(Clone, Debug, Default)]
pub(crate) struct Delta(pub(crate) BTreeMap<String, u64>, u64);

impl Snapshot {
    /// `self` (later) minus `before`.
    pub(crate) fn since(&self, before: &Snapshot) -> Delta {
        let mut out = BTreeMap::new();
        for (name, calls) in &self.0 {
            if name == "info" {
                continue;
            }
            let d = calls.saturating_sub(before.0.get(name).copied().unwrap_or(0));
            if d > 0 {
                out.insert(name.clone(), d);
            }
        }
        Delta(out, self.1.saturating_sub(before.1))
    }
}

impl Delta {
    /// redis-server's CPU time in between, µs.
    pub(crate) fn server_cpu_us(&self) -> u64 {
        self.1
    }

    /// All commands.
    pub(crate) fn total(&self) -> u64 {
        self.0.values().sum()
    }

    /// Script invocations (EVAL, EVALSHA, FCALL and their _RO forms).
    pub(crate) fn scripts(&self) -> u64 {
        self.0
            .iter()
            .filter(|(n, _)| {
                matches!(
                    n.as_str(),
                    "eval" | "evalsha" | "eval_ro" | "evalsha_ro" | "fcall" | "fcall_ro"
                )
            })
            .map(|(_, c)| c)
            .sum()
    }

    /// `name: calls/per` for each command, most frequent first.
    pub(crate) fn per(&self, per: u64) -> String {
        let mut v: Vec<(&String, &u64)> = self.0.iter().collect();
        v.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
        let per = per.max(1) as f64;
        v.iter()
            .map(|(n, c)| format!("{n} {:.2}", **c as f64 / per))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_this_processes_cpu_time() {
        let a = process_cpu_us();
        if a.is_some() {
            let t = std::time::Instant::now();
            let mut x = 0u64;
            while t.elapsed() < std::time::Duration::from_millis(50) {
                x = std::hint::black_box(x.wrapping_add(1));
            }
            assert!(process_cpu_us() > a, "50 ms of spinning used no CPU time");
        }
        let a = thread_cpu_us();
        if a.is_some() {
            let t = std::time::Instant::now();
            let mut x = 0u64;
            while t.elapsed() < std::time::Duration::from_millis(50) {
                x = std::hint::black_box(x.wrapping_add(1));
            }
            assert!(
                thread_cpu_us() > a,
                "50 ms of spinning used no thread CPU time"
            );
        }
    }

    #[test]
    fn parses_and_subtracts_without_info() {
        let a = parse(
            "# Commandstats\r\ncmdstat_get:calls=10,usec=1,usec_per_call=0.1,rejected_calls=0,failed_calls=0\r\ncmdstat_info:calls=1,usec=9\r\n",
        );
        let b = parse(
            "cmdstat_get:calls=15,usec=1\r\ncmdstat_evalsha:calls=4,usec=2\r\ncmdstat_info:calls=3,usec=9\r\ncmdstat_client|setname:calls=1,usec=0\r\n",
        );
        let d = b.since(&a);
        assert_eq!(d.total(), 10);
        assert_eq!(d.scripts(), 4);
        assert_eq!(d.0.get("get"), Some(&5));
        assert_eq!(d.0.get("client|setname"), Some(&1));
        assert!(!d.0.contains_key("info"));
        assert_eq!(d.per(5), "get 1.00, evalsha 0.80, client|setname 0.20");
        assert_eq!(
            cpu_us("# CPU\r\nused_cpu_sys:1.500000\r\nused_cpu_user:2.000001\r\nused_cpu_sys_children:9.0\r\n"),
            3_500_001
        );
    }
}
