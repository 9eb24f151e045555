//! The [`DistributedLock`] contract.

use std::time::Duration;

use fredkit_core::traits::{DistributedLock, LockLease};
use fredkit_core::{ErrorKind, Result};

use super::{assert_kind, together, Time};

const LONG: Duration = Duration::from_secs(600);
const SHORT: Duration = Duration::from_millis(50);
/// How long the suite lets pass to see a [`SHORT`] lease expire.
const EXPIRY_WAIT: Duration = Duration::from_millis(300);
/// The TTL of a lease extended right after its grant: long enough that the extension
/// cannot come too late even on a loaded machine.
const EXTENDED_FROM: Duration = Duration::from_secs(2);

/// Checks [`DistributedLock`]'s contract on `a` and `b`, two handles onto one store (two
/// managers on one Redis and prefix, or two clones of a double), on resources under `ns`.
///
/// Asserts: a grant names the resource and carries a token; while held, neither handle
/// gets it (not reentrant) but another resource is free; a lease with a wrong token
/// neither releases nor extends; `release` frees once (`true`, then `false`); fencing
/// tokens grow strictly with every grant, also after an expiry; a lease whose TTL ran out
/// lets the other handle in, and then can neither release nor extend the new holder's
/// lock; `extend` sets the remaining life (a shorter TTL ends the lease sooner, a longer
/// one keeps it past its first TTL); 16 concurrent `try_acquire`s through both handles,
/// over 8 rounds, grant exactly one lease per round; a zero TTL is `InvalidInput` for
/// `try_acquire` and `extend`.
///
/// Takes about `0.6 s + 2.5 s` of [`Time`] (real sleeps on Redis).
///
/// # Errors
///
/// An unexpected error of the implementation (the suite panics on a broken promise).
pub async fn distributed_lock<L: DistributedLock + ?Sized>(
    a: &L,
    b: &L,
    ns: &str,
    time: &Time,
) -> Result<()> {
    let res = |r: &str| format!("{ns}:{r}");
    let r = res("main");

    assert_kind(
        a.try_acquire(&r, Duration::ZERO).await,
        ErrorKind::InvalidInput,
        "try_acquire with a zero TTL",
    );

    // One holder.
    let Some(l1) = a.try_acquire(&r, LONG).await? else {
        return Err(fredkit_core::Error::protocol(format!(
            "contract: a free resource {r:?} was not granted"
        )));
    };
    assert_eq!(l1.resource, r, "a lease must name the resource it locks");
    assert!(!l1.token.is_empty(), "a lease must carry a token");
    assert!(
        b.try_acquire(&r, LONG).await?.is_none(),
        "a held lock must not be granted to another handle"
    );
    assert!(
        a.try_acquire(&r, LONG).await?.is_none(),
        "a held lock must not be granted again (not reentrant)"
    );
    assert!(
        b.try_acquire(&res("other"), LONG).await?.is_some(),
        "another resource must be free while this one is held"
    );
    assert_kind(
        a.extend(&l1, Duration::ZERO).await,
        ErrorKind::InvalidInput,
        "extend with a zero TTL",
    );

    // Only the token releases or extends.
    let forged = LockLease {
        token: format!("{}-not-mine", l1.token),
        ..l1.clone()
    };
    assert!(
        !b.release(&forged).await?,
        "a lease with another token must not release the lock"
    );
    assert!(
        !b.extend(&forged, LONG).await?,
        "a lease with another token must not extend the lock"
    );
    assert!(
        b.try_acquire(&r, LONG).await?.is_none(),
        "a forged release must leave the lock held"
    );

    // Release (through the other handle: a lease is data).
    assert!(
        b.release(&l1).await?,
        "release by the holder's lease must answer true"
    );
    assert!(!a.release(&l1).await?, "a second release must answer false");
    assert!(
        !a.extend(&l1, LONG).await?,
        "extend of a released lease must answer false"
    );

    // Fencing grows with every grant.
    let Some(l2) = b.try_acquire(&r, LONG).await? else {
        return Err(fredkit_core::Error::protocol(
            "contract: a released lock was not granted",
        ));
    };
    assert!(
        l2.fencing_token > l1.fencing_token,
        "fencing tokens must grow with every grant: {} then {}",
        l1.fencing_token,
        l2.fencing_token
    );
    assert_ne!(l2.token, l1.token, "every grant must get its own token");

    // extend sets the remaining life: shorter ends it sooner.
    assert!(
        b.extend(&l2, SHORT).await?,
        "extend by the holder must answer true"
    );
    // A lease granted with a short TTL expires too.
    let Some(s1) = a.try_acquire(&res("short"), SHORT).await? else {
        return Err(fredkit_core::Error::protocol(
            "contract: a free resource was not granted",
        ));
    };
    time.pass(EXPIRY_WAIT).await;
    let Some(l3) = a.try_acquire(&r, LONG).await? else {
        return Err(fredkit_core::Error::protocol(
            "contract: a lock whose lease was extended to a short TTL was still held after it",
        ));
    };
    assert!(
        l3.fencing_token > l2.fencing_token,
        "fencing tokens must grow across an expiry: {} then {}",
        l2.fencing_token,
        l3.fencing_token
    );
    assert!(
        !b.release(&l2).await?,
        "an expired lease must not release the next holder's lock"
    );
    assert!(
        !b.extend(&l2, LONG).await?,
        "an expired lease must not extend the next holder's lock"
    );
    assert!(
        b.try_acquire(&r, LONG).await?.is_none(),
        "the next holder's lock must be left alone"
    );
    let s2 = b.try_acquire(&res("short"), LONG).await?;
    assert!(s2.is_some(), "a lease must end once its TTL has passed");
    assert!(
        s2.is_some_and(|s2| s2.fencing_token > s1.fencing_token),
        "fencing tokens must grow across an expiry"
    );
    assert!(
        a.release(&l3).await?,
        "release by the holder's lease must answer true"
    );

    // extend sets the remaining life: longer keeps it past its first TTL.
    // A loaded machine can stall between the grant and the extend for
    // longer than the first TTL: then that attempt proves nothing and is
    // retried on a fresh resource (never a timing assertion).
    let mut extended = None;
    for attempt in 0..5 {
        let resource = res(&format!("extended{attempt}"));
        let started = std::time::Instant::now();
        let Some(l4) = a.try_acquire(&resource, EXTENDED_FROM).await? else {
            return Err(fredkit_core::Error::protocol(
                "contract: a free resource was not granted",
            ));
        };
        let answered = a.extend(&l4, LONG).await?;
        if started.elapsed() >= EXTENDED_FROM / 2 {
            let _ = a.release(&l4).await;
            continue;
        }
        assert!(answered, "extend right after the grant must answer true");
        extended = Some((resource, l4));
        break;
    }
    let Some((resource, l4)) = extended else {
        return Err(fredkit_core::Error::protocol(
            "contract: every grant+extend took longer than half the first TTL (machine overloaded)",
        ));
    };
    time.pass(EXTENDED_FROM + Duration::from_millis(500)).await;
    assert!(
        b.try_acquire(&resource, LONG).await?.is_none(),
        "an extended lease must outlive its first TTL"
    );
    assert!(
        a.release(&l4).await?,
        "an extended lease must still release"
    );

    // Races: exactly one grant per round, tokens growing.
    let raced = res("raced");
    let mut last = 0;
    for round in 0..8 {
        let tries = (0..16).map(|i| {
            let lock = if i % 2 == 0 { a } else { b };
            let raced = &raced;
            async move { lock.try_acquire(raced, LONG).await }
        });
        let mut granted = Vec::new();
        for got in together(tries).await {
            granted.extend(got?);
        }
        assert_eq!(
            granted.len(),
            1,
            "round {round}: 16 racing try_acquire calls must grant exactly one lease"
        );
        let lease = &granted[0];
        assert!(
            lease.fencing_token > last,
            "round {round}: fencing tokens must grow: {last} then {}",
            lease.fencing_token
        );
        last = lease.fencing_token;
        assert!(
            a.release(lease).await?,
            "round {round}: the winner's release must answer true"
        );
    }
    Ok(())
}
