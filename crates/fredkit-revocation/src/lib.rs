//! JWT revocation on Redis: revoke a token by id until it expires, or every
//! token of a subject or organisation at once, and check a token in one
//! round trip — with an explicit answer for when Redis is down.
//!
//! [`Revocations`] implements fredkit-core's object-safe
//! [`RevocationStore`] and adds organisations, server-clock cut-offs,
//! session tracking, counters and an optional local cache. JWT validation
//! (signature, `exp`, audience) is **not** done here: it stays your JWT
//! library's job, before the check.
//!
//! ```no_run
//! use std::time::{Duration, UNIX_EPOCH};
//! use fredkit_conn::Redis;
//! use fredkit_revocation::{FailMode, RevocationOptions, Revocations, TokenClaims};
//!
//! # async fn run(claims: TokenClaims) -> fredkit_core::Result<()> {
//! let redis = Redis::from_url("redis://127.0.0.1:6379").await?;
//! let options = RevocationOptions::builder(FailMode::Closed) // outage: refuse tokens
//!     .max_token_lifetime(Duration::from_secs(3600))        // longest exp - iat you issue
//!     .build()?;
//! let store = Revocations::new(&redis, options).await?;
//!
//! // Log out this session; then every session of the user.
//! store.revoke(&claims.jti, UNIX_EPOCH + Duration::from_secs(claims.exp)).await?;
//! store.revoke_subject_now(&claims.sub).await?;
//!
//! // On every request, once your JWT library has validated the token:
//! assert!(store.check(&claims).await?);
//! # Ok(()) }
//! ```
//!
//! # The model
//!
//! | what | key (prefix default `fredkit:revocation`) | value | expires |
//! |---|---|---|---|
//! | a revoked token | `prefix:jti:<jti>` | `1` | at `exp` + leeway (`PXAT`), never earlier |
//! | a subject's cut-off | `prefix:sub:<sub>` | cut-off, Unix s | cut-off + `max_token_lifetime` + leeway |
//! | an organisation's cut-off | `prefix:org:<org>` | cut-off, Unix s | same |
//! | a subject's tracked tokens | `prefix:active:<sub>` | sorted set jti → exp ms | at its latest member's exp |
//!
//! A token is refused by [`check`](Revocations::check) when its id is
//! revoked, or its `iat` is **at or before** (`<=`) the cut-off of its
//! subject or organisation. Cut-offs are whole seconds, like `iat`: a token
//! issued in the same second as the revocation is refused too, so no token
//! issued before the revocation can slip through (a token issued right
//! after, in that second, has to be re-issued a second later). Cut-offs only
//! move forward. Every time decision made in Redis (has the token expired?
//! the `_now` cut-offs, tracking trims) uses the server's clock (`TIME`
//! inside the scripts).
//!
//! Leeway: JWT validators usually accept a token a little past its `exp`
//! (`jsonwebtoken` allows 60 s by default, and compares whole seconds, so it
//! accepts a token until `exp + 61 s`). Set
//! [`expiry_leeway`](RevocationOptionsBuilder::expiry_leeway) to the last
//! moment past `exp` your validator accepts (61 s there), so a token the
//! validator still accepts is still found revoked.
//!
//! # Round trips
//!
//! One per call (see [`Revocations`]); `check` pipelines `EXISTS` and one or
//! two `GET`s. On a cluster those keys are in different slots: fred sends
//! each command to its node at once, so a check costs one round trip to each
//! of up to three nodes, in parallel (latency: the slowest of them). With
//! the local cache most reads cost none.
//!
//! # Failure
//!
//! [`FailMode`] has no default: [`FailMode::Open`] answers "not revoked"
//! while Redis is unavailable (availability first), [`FailMode::Closed`]
//! answers "revoked" (safety first). Each such answer is logged and counted
//! ([`RevocationMetrics::fail_open`], [`RevocationMetrics::fail_closed`]).
//! Reads go through a [`CircuitBreaker`](fredkit_core::CircuitBreaker); once
//! it opens, reads are answered by the fail mode without touching Redis
//! until it half-opens. Writes (`revoke*`, `track*`) return the error: a
//! failed revocation did not happen, retry it (they are idempotent).
//!
//! Durability is Redis's: an acknowledged revocation is on the master. A
//! restart without persistence, or a failover to a replica that had not yet
//! received it (replication is asynchronous), forgets it and the token is
//! accepted again. Run the server with AOF (`appendonly yes`) and re-issue
//! critical revocations after a failover.
//!
//! # Features
//!
//! - `local-cache`: `LocalCacheOptions` — answers from memory, fed by
//!   revocation events over fredkit-pubsub (see its docs for the exact
//!   guarantee).
//! - `tower`: `RevocationLayer` — 401 for revoked tokens (503 for a
//!   fail-closed outage) in a tower / axum stack; a request that reaches it
//!   without claims (no token, or the layers misordered) is refused with
//!   401 unless `allow_requests_without_claims(true)`. In axum the last
//!   `.layer()` runs first: add the revocation layer *before* the layer
//!   that validates the JWT and inserts the claims.
//!
//! # Closing
//!
//! [`Revocations::close`] stops what a store owns (with the local cache:
//! its event listener and, unless shared, its subscriber connection). The
//! [`Redis`](fredkit_conn::Redis) handle is the caller's: close the stores,
//! then call [`Redis::shutdown`](fredkit_conn::Redis::shutdown).
#![forbid(unsafe_code)]
#![cfg_attr(docsrs, feature(doc_cfg))]

/// The README's example, compiled as a doctest so that it cannot rot.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;

mod acl;
mod event;
#[cfg(feature = "tower")]
mod layer;
#[cfg(feature = "local-cache")]
mod local;
mod metrics;
mod options;
mod store;

/// The core types every fredkit crate shares, re-exported the same way from
/// each: `fredkit_<crate>::{Error, ErrorKind, Result, FailMode, KeySpace,
/// IntoKeySpace}` are `fredkit_core`'s.
pub use acl::{acl_rule, ACL_COMMANDS};
pub use fredkit_core::{Error, ErrorKind, FailMode, IntoKeySpace, KeySpace, Result};
#[cfg(feature = "tower")]
#[cfg_attr(docsrs, doc(cfg(feature = "tower")))]
pub use layer::{RevocationLayer, RevocationService};
#[cfg(feature = "local-cache")]
#[cfg_attr(docsrs, doc(cfg(feature = "local-cache")))]
pub use local::LocalCacheOptions;
pub use metrics::RevocationMetrics;
pub use options::{RevocationOptions, RevocationOptionsBuilder, DEFAULT_PREFIX};
pub use store::{ActiveToken, Revocations, Revoked, Verdict};

pub use fredkit_core::traits::{RevocationStore, TokenClaims};
