//! A handle connecting lazily to a wrong URL says why in the log, once: one
//! WARN naming the redacted URL and the cause, however often fred retries.
//! Needs a process of its own (nextest runs every test in one): it installs
//! the global subscriber.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use fredkit_conn::{Redis, RedisConfig};
use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_url_is_logged_once_with_its_cause() {
    let captured = Captured::default();
    let writer = captured.clone();
    tracing_subscriber::fmt()
        .with_max_level(tracing::Level::WARN)
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .init();

    let config = RedisConfig::builder()
        .url("redis://:pw-s3cret@no-such-host.invalid:6391")
        .connect_timeout(Duration::from_millis(1500))
        .build()
        .unwrap();
    let redis = Redis::connect(config).await.unwrap();
    // Several attempts fail meanwhile (the reconnect policy starts at 100 ms).
    let e = redis.wait_connected().await.unwrap_err();
    assert!(e.to_string().contains("cannot resolve"), "{e}");
    drop(redis);

    let text = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
    let ours: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("fredkit: cannot connect to Redis"))
        .collect();
    assert_eq!(ours.len(), 1, "one WARN per distinct cause:\n{text}");
    let line = ours[0];
    assert!(line.contains("WARN"), "{line}");
    assert!(
        line.contains("cannot resolve the host name 'no-such-host.invalid' of redis://:***@no-such-host.invalid:6391"),
        "{line}"
    );
    assert!(!text.contains("pw-s3cret"), "password in the log:\n{text}");
}
