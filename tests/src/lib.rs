//! Cross-crate integration and fault tests for fredkit live in `tests/tests/`.
//! This library is empty on purpose.
