//! fredkit benchmarks.
fn main() {}
