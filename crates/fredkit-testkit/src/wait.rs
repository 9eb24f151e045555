//! Waiting for a topology to reach a state, with a deadline.

use std::time::{Duration, Instant};

use crate::error::{Result, TestkitError};

/// Polls `check` every 50 ms until it returns `Ok(None)` (done) or `timeout` passes; `Ok(Some)`
/// describes what is still missing and ends up in the timeout error.
pub(crate) fn poll_until(
    what: &str,
    timeout: Duration,
    check: &mut dyn FnMut() -> Result<Option<String>>,
) -> Result<()> {
    let started = Instant::now();
    loop {
        let last = match check()? {
            None => return Ok(()),
            Some(problem) => problem,
        };
        if started.elapsed() >= timeout {
            return Err(TestkitError::Timeout {
                what: what.to_owned(),
                waited: started.elapsed(),
                last,
            });
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}
