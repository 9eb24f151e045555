//! Captures the test process's tracing output so that a test can assert on what was
//! logged (feature `capture`, on by default).
//!
//! [`Logs::install`] installs, once per process, a `tracing-subscriber` fmt subscriber at
//! INFO and up that writes into an in-memory buffer; fred's `log` records are included
//! (tracing-subscriber bridges them). Each call returns a view of the buffer from that
//! moment, so a test reads only what was logged after it asked.
//!
//! nextest runs every test in its own process. Under `cargo test` the tests of one binary
//! share the buffer, so assert on messages only the test itself can cause. If another
//! global subscriber was installed first, nothing is captured (and a test asserting that
//! a message was logged fails, which says so).
//!
//! ```
//! use fredkit_testkit::capture::Logs;
//!
//! let logs = Logs::install();
//! tracing::warn!("something odd");
//! assert_eq!(logs.lines_containing("something odd").len(), 1);
//! assert!(logs.warnings().iter().any(|l| l.contains("something odd")));
//! ```

use std::io::Write;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError};

#[derive(Clone, Default)]
struct Buffer(Arc<Mutex<Vec<u8>>>);

impl Buffer {
    /// The bytes; a panic while another thread held the lock leaves them usable.
    fn bytes(&self) -> MutexGuard<'_, Vec<u8>> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Write for Buffer {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.bytes().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

static BUFFER: OnceLock<Buffer> = OnceLock::new();

/// A view of the captured output from the moment it was made.
pub struct Logs {
    buffer: Buffer,
    from: usize,
}

impl Logs {
    /// Installs the capturing subscriber (once per process, INFO and up) and returns a view
    /// starting now.
    pub fn install() -> Logs {
        let buffer = BUFFER
            .get_or_init(|| {
                let buffer = Buffer::default();
                let writer = buffer.clone();
                let _ = tracing_subscriber::fmt()
                    .with_max_level(tracing::Level::INFO)
                    .with_writer(move || writer.clone())
                    .with_ansi(false)
                    .try_init();
                buffer
            })
            .clone();
        let from = buffer.bytes().len();
        Logs { buffer, from }
    }

    /// Everything captured since this view was made.
    pub fn text(&self) -> String {
        let all = self.buffer.bytes();
        let from = self.from.min(all.len());
        String::from_utf8_lossy(all.get(from..).unwrap_or_default()).into_owned()
    }

    /// The captured lines containing `needle`.
    pub fn lines_containing(&self, needle: &str) -> Vec<String> {
        self.text()
            .lines()
            .filter(|l| l.contains(needle))
            .map(str::to_string)
            .collect()
    }

    /// The captured WARN and ERROR lines.
    pub fn warnings(&self) -> Vec<String> {
        self.text()
            .lines()
            .filter(|l| l.contains(" WARN ") || l.contains(" ERROR "))
            .map(str::to_string)
            .collect()
    }
}
