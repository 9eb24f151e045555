//! Without redis-server, starting fails with a message that says how to install it.
//!
//! The environment is changed only in a child process (this test binary re-run), so no
//! other test sees a modified `PATH` or `FREDKIT_REDIS_SERVER`.

// Helpers outside #[test] functions are test code too.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::process::Command;

use fredkit_testkit::{RedisServer, REDIS_SERVER_ENV};

const CHILD_ENV: &str = "FREDKIT_TESTKIT_MISSING_BINARY_CHILD";

/// Does nothing in a normal run; in the child, prints the start error.
#[test]
fn child_process_that_starts_a_server() {
    if std::env::var_os(CHILD_ENV).is_none() {
        return;
    }
    let err = RedisServer::start().unwrap_err();
    println!("START-ERROR {err}");
}

fn start_error_in_child(configure: impl FnOnce(&mut Command)) -> String {
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    let child_test = fredkit_testkit::test_name!(child_process_that_starts_a_server);
    cmd.args([&child_test, "--exact", "--nocapture", "--test-threads=1"])
        .env(CHILD_ENV, "1");
    configure(&mut cmd);
    let out = cmd.output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "child failed:\n{stdout}");
    let (_, message) = stdout
        .split_once("START-ERROR ")
        .unwrap_or_else(|| panic!("no error reported:\n{stdout}"));
    message.lines().next().unwrap().to_owned()
}

#[test]
fn missing_redis_server_on_path_names_the_packages_to_install() {
    let empty = tempfile::tempdir().unwrap();
    let message = start_error_in_child(|cmd| {
        cmd.env_remove(REDIS_SERVER_ENV).env("PATH", empty.path());
    });
    assert_eq!(
        message,
        "redis-server not found on PATH: install it with 'apt-get install redis-server \
         redis-tools redis-sentinel' (or set FREDKIT_REDIS_SERVER to its path)"
    );
}

#[test]
fn a_wrong_fredkit_redis_server_path_is_named_in_the_error() {
    let message = start_error_in_child(|cmd| {
        cmd.env(REDIS_SERVER_ENV, "/nonexistent/redis-server");
    });
    assert!(message.contains("/nonexistent/redis-server"), "{message}");
    assert!(message.contains("FREDKIT_REDIS_SERVER"), "{message}");
    assert!(
        message.contains("apt-get install redis-server"),
        "{message}"
    );
}
