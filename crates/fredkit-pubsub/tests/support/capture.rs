//! Captures this test process's tracing output (fred's `log` records
//! included, bridged by tracing-subscriber) so tests can assert on warnings.
//! nextest runs every test in its own process; under `cargo test` the
//! tests of one binary share the buffer, so assert on messages only the
//! test itself can cause, or use a binary of its own.

use std::io::Write;
use std::sync::{Arc, Mutex, OnceLock};

#[derive(Clone, Default)]
struct Buffer(Arc<Mutex<Vec<u8>>>);

impl Write for Buffer {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

static BUFFER: OnceLock<Buffer> = OnceLock::new();

/// A view of the captured output from the moment it was made.
pub(crate) struct Logs {
    buffer: Buffer,
    from: usize,
}

impl Logs {
    /// Installs the capturing subscriber (once per process, INFO and up)
    /// and returns a view starting now.
    pub(crate) fn install() -> Logs {
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
        let from = buffer.0.lock().unwrap().len();
        Logs { buffer, from }
    }

    /// Everything captured since this view was made.
    pub(crate) fn text(&self) -> String {
        let all = self.buffer.0.lock().unwrap();
        String::from_utf8_lossy(&all[self.from.min(all.len())..]).into_owned()
    }

    /// The captured lines containing `needle`.
    pub(crate) fn lines_containing(&self, needle: &str) -> Vec<String> {
        self.text()
            .lines()
            .filter(|l| l.contains(needle))
            .map(str::to_string)
            .collect()
    }

    /// The captured WARN and ERROR lines.
    pub(crate) fn warnings(&self) -> Vec<String> {
        self.text()
            .lines()
            .filter(|l| l.contains(" WARN ") || l.contains(" ERROR "))
            .map(str::to_string)
            .collect()
    }
}
