//! The shared vocabulary of fredkit: the types every fredkit crate speaks.
//!
//! One [`Error`] with a matchable [`ErrorKind`]; value [`Codec`]s; [`KeySpace`]
//! for cluster-safe key names; [`Script`] for Lua with EVALSHA/NOSCRIPT
//! handling; [`Backoff`], [`CircuitBreaker`], [`FailMode`] and an injectable
//! [`Clock`]; and the object-safe [`traits`] of each primitive, so code that
//! only consumes a cache, lock or limiter depends on this crate alone. This
//! crate opens no connection of its own.
//!
//! ```
//! use fredkit_core::{Codec, KeySpace, MsgPack};
//! use serde::{Deserialize, Serialize};
//!
//! #[derive(Debug, PartialEq, Serialize, Deserialize)]
//! struct Session {
//!     user: u64,
//! }
//!
//! let sessions = KeySpace::new("app:session")?;
//! let key = sessions.tagged("user42", ["web"])?; // "app:session:{user42}:web"
//! let bytes = MsgPack.encode(&Session { user: 42 })?;
//! assert_eq!(MsgPack.decode::<Session>(&bytes)?, Session { user: 42 });
//! assert_eq!(key, "app:session:{user42}:web");
//! # Ok::<(), fredkit_core::Error>(())
//! ```
//!
//! # Features
//!
//! - `json`: the [`Json`] codec (serde_json), next to the default
//!   [`MsgPack`].
#![forbid(unsafe_code)]
#![cfg_attr(docsrs, feature(doc_cfg))]

/// The README's example, compiled as a doctest so that it cannot rot.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;

mod backoff;
mod breaker;
mod clock;
mod codec;
mod error;
mod fail_mode;
mod keys;
pub mod metrics;
mod script;
pub mod traits;

pub use backoff::{Backoff, BackoffBuilder, BackoffIter};
pub use breaker::{BreakerState, CircuitBreaker, CircuitBreakerBuilder, Permit};
pub use clock::{Clock, ManualClock, SystemClock};
#[cfg(feature = "json")]
#[cfg_attr(docsrs, doc(cfg(feature = "json")))]
pub use codec::Json;
pub use codec::{Codec, MsgPack};
pub use error::{Error, ErrorKind, Result};
pub use fail_mode::FailMode;
pub use keys::{IntoKeySpace, KeySpace, SEPARATOR};
pub use script::Script;
