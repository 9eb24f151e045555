//! The distributed lock trait: [`DistributedLock`] and [`LockLease`].

use std::{fmt, time::Duration};

use async_trait::async_trait;

use crate::Result;

/// Proof of holding a lock: what [`DistributedLock::try_acquire`] hands out.
///
/// The lease is plain data; holding it does not keep the lock alive (the lock
/// expires after its TTL unless [extended](DistributedLock::extend)), and
/// dropping it does not release the lock. Implementations may offer a guard
/// that does both.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct LockLease {
    /// The locked resource, as passed to `try_acquire`.
    pub resource: String,
    /// The random token identifying this holder. Only the holder of the token
    /// can release or extend the lock, so a holder whose lease expired cannot
    /// release the next holder's lock. Not shown by `Debug`.
    pub token: String,
    /// A number that grows with every grant of this resource's lock. Pass it
    /// to the storage you protect and have it reject writes carrying a
    /// smaller number than it has seen: a paused holder whose lease expired
    /// then cannot overwrite the work of the next holder.
    pub fencing_token: u64,
}

impl fmt::Debug for LockLease {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LockLease")
            .field("resource", &self.resource)
            .field("token", &"<redacted>")
            .field("fencing_token", &self.fencing_token)
            .finish()
    }
}

/// A mutual-exclusion lock shared between processes, with expiry and
/// fencing tokens.
///
/// At most one holder has a live lease on a resource at any time (per the
/// store's clock); a lease ends when released or when its TTL runs out.
/// Locks fail closed: when the store cannot be reached, the lock is not
/// acquired.
///
/// # Contract
///
/// | method | promise | round trips (Redis implementations) |
/// |---|---|---|
/// | [`try_acquire`](Self::try_acquire) | a lease if the resource was free, `None` if someone holds it; never waits | 1 (one script) |
/// | [`release`](Self::release) | frees the lock only if `lease` still holds it; `true` if it did | 1 (one script) |
/// | [`extend`](Self::extend) | resets the TTL only if `lease` still holds it; `true` if it did | 1 (one script) |
///
/// Expiry uses the store's clock (`TIME` in the script for Redis), never the
/// caller's. The TTL must be non-zero
/// ([`ErrorKind::InvalidInput`](crate::ErrorKind::InvalidInput) otherwise).
///
/// **Failure.** An unreachable store is an error, never a grant: treat an
/// error from `try_acquire` as "not acquired". An error from `release` means
/// the lock may still be held until its TTL ends; an error from `extend`
/// means the lease may end at its old expiry — stop the protected work.
///
/// **Cancellation.** Dropping a `try_acquire` future halfway may leave a lock
/// granted to a lease nobody received; it expires after its TTL.
/// Implementations should keep such TTLs short or release in the background.
/// Dropping `release` or `extend` leaves the lock either unchanged or as the
/// call would have left it.
#[async_trait]
pub trait DistributedLock: Send + Sync {
    /// Tries once to take the lock on `resource` for `ttl`.
    ///
    /// `Ok(None)` when another holder has it.
    ///
    /// # Errors
    ///
    /// The store could not be reached, or `ttl` is zero. Not acquired.
    async fn try_acquire(&self, resource: &str, ttl: Duration) -> Result<Option<LockLease>>;

    /// Releases the lock if `lease` still holds it. `false` when the lease had
    /// already expired (and perhaps someone else holds the lock now — their
    /// lock is left alone).
    ///
    /// # Errors
    ///
    /// The store could not be reached; the lock ends at its TTL.
    async fn release(&self, lease: &LockLease) -> Result<bool>;

    /// Sets the lock's remaining life to `ttl` if `lease` still holds it.
    /// `false` when the lease had already expired: the protected work must
    /// stop.
    ///
    /// # Errors
    ///
    /// The store could not be reached, or `ttl` is zero.
    async fn extend(&self, lease: &LockLease, ttl: Duration) -> Result<bool>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lease_debug_hides_the_token() {
        let lease = LockLease {
            resource: "orders:7".into(),
            token: "s3cr3t-token".into(),
            fencing_token: 12,
        };
        let shown = format!("{lease:?}");
        assert!(!shown.contains("s3cr3t"), "{shown}");
        assert!(
            shown.contains("orders:7") && shown.contains("12"),
            "{shown}"
        );
    }
}
