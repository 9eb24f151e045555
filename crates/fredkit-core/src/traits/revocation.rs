//! The token revocation trait: [`RevocationStore`] and [`TokenClaims`].

use std::time::SystemTime;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::Result;

/// The claims of a JWT that revocation looks at. Times are Unix seconds, as
/// in the token.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct TokenClaims {
    /// The token's unique id (`jti`).
    pub jti: String,
    /// The subject (`sub`), usually the user id.
    pub sub: String,
    /// The organisation or tenant, for implementations that revoke per
    /// organisation; `None` when the token has none.
    pub org: Option<String>,
    /// Issued at (`iat`), Unix seconds.
    pub iat: u64,
    /// Expires at (`exp`), Unix seconds.
    pub exp: u64,
}

/// Remembers revoked tokens — one by id, or every token of a subject issued
/// up to a moment — until they would have expired anyway.
///
/// # Contract
///
/// | method | promise | round trips (Redis implementations) |
/// |---|---|---|
/// | [`revoke`](Self::revoke) | `jti` is revoked until `expires_at`; the record then expires | 1 |
/// | [`is_revoked`](Self::is_revoked) | whether `jti` was revoked | 1 |
/// | [`revoke_subject`](Self::revoke_subject) | every token of `sub` issued at or before `at` is revoked | 1 |
/// | [`check`](Self::check) | whether the token is revoked by id *or* by subject | 1 (both looked up in one round trip) |
///
/// Revocation records carry a TTL: a record outlives the tokens it covers by
/// no more than the implementation's stated margin. Revoking is idempotent;
/// revoking a subject again with a later `at` moves the cut-off forward,
/// never back.
///
/// **Failure.** Implementations take a [`FailMode`](crate::FailMode) for the
/// read side (`is_revoked`, `check`): when the store is unavailable,
/// [`FailMode::Open`](crate::FailMode::Open) answers "not revoked" and
/// [`FailMode::Closed`](crate::FailMode::Closed) answers "revoked"; the
/// outage is logged and counted. The write side (`revoke`,
/// `revoke_subject`) returns the error: the caller must know a revocation
/// did not happen.
///
/// **Cancellation.** Dropping a `revoke` future leaves the token either
/// revoked or not — call again to be sure (it is idempotent). Dropping a read
/// has no effect.
#[async_trait]
pub trait RevocationStore: Send + Sync {
    /// Revokes the token `jti` until `expires_at` (its `exp`); after that
    /// the token is invalid anyway and the record goes.
    ///
    /// # Errors
    ///
    /// The store could not be written: the token is **not** known to be revoked.
    async fn revoke(&self, jti: &str, expires_at: SystemTime) -> Result<()>;

    /// Whether the token `jti` was revoked by id.
    ///
    /// # Errors
    ///
    /// Only failures the [`FailMode`](crate::FailMode) does not cover.
    async fn is_revoked(&self, jti: &str) -> Result<bool>;

    /// Revokes every token of subject `sub` issued at or before `at` (log
    /// out everywhere, password change, compromised account).
    ///
    /// # Errors
    ///
    /// The store could not be written: the subject is **not** known to be revoked.
    async fn revoke_subject(&self, sub: &str, at: SystemTime) -> Result<()>;

    /// `Ok(true)` when the token must be refused: revoked by id, or issued
    /// (`iat`) at or before its subject's revocation cut-off.
    ///
    /// # Errors
    ///
    /// Only failures the [`FailMode`](crate::FailMode) does not cover.
    async fn check(&self, claims: &TokenClaims) -> Result<bool>;
}
