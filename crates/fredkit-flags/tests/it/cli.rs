//! The `fredkit-flags` CLI run as a process against the shared servers.

use std::process::{Command, Output};

use fredkit_testkit::{shared_url, unique_prefix, Topology};
use rstest::rstest;

struct Cli {
    url: String,
    prefix: String,
}

impl Cli {
    async fn run(&self, args: &[&str]) -> Output {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_fredkit-flags"));
        cmd.args(args)
            .env("REDIS_URL", &self.url)
            .env("FREDKIT_FLAGS_PREFIX", &self.prefix)
            .env("USER", "cli-test");
        tokio::task::spawn_blocking(move || cmd.output().unwrap())
            .await
            .unwrap()
    }

    /// Runs `args`, expects exit code `code`; returns stdout (stderr when
    /// it failed).
    async fn expect(&self, code: i32, args: &[&str]) -> String {
        let out = self.run(args).await;
        let (stdout, stderr) = (
            String::from_utf8_lossy(&out.stdout).to_string(),
            String::from_utf8_lossy(&out.stderr).to_string(),
        );
        assert_eq!(
            out.status.code(),
            Some(code),
            "fredkit-flags {args:?}: stdout {stdout:?} stderr {stderr:?}"
        );
        if code == 0 {
            stdout
        } else {
            stderr
        }
    }
}

/// set, enable --percent, allow user:42, deny group:x, expire 7d, get,
/// list, --json, audit, delete; errors: unknown flag, bad percent, bad
/// target, missing flag, with their exit codes.
#[rstest]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_cli_command_runs_as_a_process(
    #[values(Topology::Standalone, Topology::Cluster)] topology: Topology,
) {
    let cli = Cli {
        url: shared_url(topology).unwrap(),
        prefix: unique_prefix("flags_cli").trim_end_matches(':').to_string(),
    };
    let out = cli.expect(0, &["list"]).await;
    assert!(out.contains("(no flags under"), "{out}");
    let out = cli
        .expect(
            0,
            &[
                "set",
                "checkout",
                "--on",
                "--percent",
                "20",
                "--value",
                "\"blue\"",
            ],
        )
        .await;
    assert_eq!(out.trim(), "checkout: written (rev 1, version 1)");
    cli.expect(0, &["enable", "checkout", "--percent", "30"])
        .await;
    cli.expect(0, &["allow", "checkout", "user:42"]).await;
    cli.expect(0, &["deny", "checkout", "group:banned"]).await;
    cli.expect(0, &["expire", "checkout", "7d"]).await;
    let out = cli.expect(0, &["get", "checkout"]).await;
    for part in [
        "checkout",
        "on 30%",
        "allow users: 42",
        "deny groups: banned",
        "value: \"blue\"",
        "expires in 6d",
        "rev 5 by cli-test",
    ] {
        assert!(out.contains(part), "{part:?} missing from {out:?}");
    }
    let json: serde_json::Value =
        serde_json::from_str(&cli.expect(0, &["--json", "get", "checkout"]).await).unwrap();
    assert_eq!(json["def"]["percent"], 30.0);
    assert_eq!(json["def"]["allow_users"], serde_json::json!(["42"]));
    assert_eq!(json["def"]["deny_groups"], serde_json::json!(["banned"]));
    let ttl = json["expires_at"].as_u64().unwrap() - json["updated_at"].as_u64().unwrap();
    assert_eq!(ttl, 7 * 86_400 * 1000);
    cli.expect(0, &["set", "other", "--off"]).await;
    let out = cli.expect(0, &["list"]).await;
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 2, "{out}");
    assert!(lines[0].starts_with("checkout") && lines[1].starts_with("other"));
    assert!(lines[1].contains("off"));
    let list: serde_json::Value =
        serde_json::from_str(&cli.expect(0, &["--json", "list"]).await).unwrap();
    assert_eq!(list.as_array().unwrap().len(), 2);
    let audit: serde_json::Value =
        serde_json::from_str(&cli.expect(0, &["--json", "audit", "-n", "10"]).await).unwrap();
    let ops: Vec<&str> = audit
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["op"].as_str().unwrap())
        .collect();
    assert_eq!(ops, ["set", "update", "update", "update", "update", "set"]);
    assert_eq!(audit[0]["by"], "cli-test");

    // Errors: typed, on stderr, with exit codes.
    let err = cli.expect(1, &["enable", "missing"]).await;
    assert!(err.contains("flag 'missing' does not exist"), "{err}");
    let err = cli
        .expect(1, &["set", "checkout", "--on", "--percent", "120"])
        .await;
    assert!(err.contains("invalid percent"), "{err}");
    let err = cli.expect(1, &["allow", "checkout", "42"]).await;
    assert!(err.contains("user:ID or group:NAME"), "{err}");
    let err = cli.expect(1, &["expire", "checkout", "7y"]).await;
    assert!(err.contains("unit"), "{err}");
    cli.expect(4, &["get", "missing"]).await;
    cli.expect(2, &["enable"]).await;
    let out = cli.expect(0, &["expire", "checkout", "never"]).await;
    assert!(out.contains("rev 6"), "{out}");
    let out = cli.expect(0, &["delete", "checkout"]).await;
    assert!(out.contains("checkout: deleted"), "{out}");
    cli.expect(4, &["get", "checkout"]).await;
}
