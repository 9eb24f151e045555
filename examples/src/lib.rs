//! Small programs that use only the `fredkit` facade, as a service would.
//!
//! Each program is a function here (so `tests/examples.rs` runs it against
//! real servers, standalone and cluster) and a binary in `src/bin/` that
//! reads `REDIS_URL`:
//!
//! ```text
//! REDIS_URL=redis://127.0.0.1:6379 cargo run -p fredkit-examples --bin quickstart
//! REDIS_URL=redis://127.0.0.1:6379 cargo run -p fredkit-examples --bin service
//! ```

pub mod quickstart;
pub mod service;
