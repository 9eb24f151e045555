//! The [`RevocationStore`] contract.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fredkit_core::traits::{RevocationStore, TokenClaims};
use fredkit_core::Result;

use super::Time;

/// How long the short-lived revocations of the suite last: long enough that "revoked
/// now" holds right after the call even on a loaded machine.
const SHORT: Duration = Duration::from_secs(2);

fn claims(jti: &str, sub: &str, iat: u64) -> TokenClaims {
    TokenClaims {
        jti: jti.to_string(),
        sub: sub.to_string(),
        org: None,
        iat,
        exp: iat + 600,
    }
}

/// Checks [`RevocationStore`]'s contract on `a` and `b`, two handles onto one store, with
/// token ids and subjects under `ns`. `margin` is how long the implementation states a
/// revocation record outlives the token's `exp` (its leeway; 0 by default for
/// fredkit-revocation and the memory double). The store must accept tokens living 600 s
/// (`exp - iat`).
///
/// Asserts: a revoked id reads revoked through both handles (`is_revoked` and `check`)
/// while others do not; revoking again is `Ok` (idempotent); a token already past its
/// expiry plus `margin` is `Ok` and not recorded; a subject cut-off revokes tokens issued at or before
/// its second (inclusive) and not after, only for that subject; an earlier cut-off given
/// later moves nothing back, a later one moves it forward; `check` refuses by id whatever
/// the subject; a revocation lasts until `exp` and is gone once `exp + margin` has
/// passed; a later `exp` given first is never shortened by an earlier one.
///
/// Takes about `2.6 s + margin` of [`Time`] (real sleeps on Redis).
///
/// # Errors
///
/// An unexpected error of the implementation (the suite panics on a broken promise).
pub async fn revocation_store<S: RevocationStore + ?Sized>(
    a: &S,
    b: &S,
    ns: &str,
    time: &Time,
    margin: Duration,
) -> Result<()> {
    let id = |k: &str| format!("{ns}:{k}");
    let now = SystemTime::now();
    let now_s = now
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let hour = now + Duration::from_secs(3600);

    // By id.
    assert!(
        !a.is_revoked(&id("j1")).await?,
        "a token never revoked must not read revoked"
    );
    a.revoke(&id("j1"), hour).await?;
    assert!(
        b.is_revoked(&id("j1")).await?,
        "a revoked token must read revoked through the other handle"
    );
    assert!(
        !b.is_revoked(&id("j2")).await?,
        "revoking one token must not revoke another"
    );
    a.revoke(&id("j1"), hour).await?;
    assert!(
        b.is_revoked(&id("j1")).await?,
        "revoking again must keep the token revoked"
    );
    assert!(
        b.check(&claims(&id("j1"), &id("clean-sub"), now_s)).await?,
        "check must refuse a token revoked by id"
    );
    assert!(
        !b.check(&claims(&id("j2"), &id("clean-sub"), now_s)).await?,
        "check must let a token through that is revoked neither by id nor by subject"
    );

    // Already expired (margin included): nothing to revoke.
    a.revoke(&id("gone"), now - margin - Duration::from_secs(10))
        .await?;
    assert!(
        !b.is_revoked(&id("gone")).await?,
        "revoking a token already past its expiry (plus the margin) must record nothing"
    );

    // By subject: iat <= the cut-off's second.
    let sub = id("sub");
    a.revoke_subject(&sub, now).await?;
    for (iat, revoked, what) in [
        (now_s, true, "issued in the cut-off's second"),
        (now_s - 100, true, "issued before the cut-off"),
        (now_s + 1, false, "issued after the cut-off"),
    ] {
        assert_eq!(
            b.check(&claims(&id("jx"), &sub, iat)).await?,
            revoked,
            "a token of the revoked subject {what} (iat {iat}, cut-off {now_s})"
        );
    }
    assert!(
        !b.check(&claims(&id("jx"), &id("other-sub"), now_s - 100))
            .await?,
        "a subject cut-off must not revoke another subject's tokens"
    );
    assert!(
        !b.is_revoked(&id("jx")).await?,
        "a subject cut-off must not revoke by id"
    );
    // Never back, only forward.
    b.revoke_subject(&sub, now - Duration::from_secs(1000))
        .await?;
    assert!(
        a.check(&claims(&id("jx"), &sub, now_s)).await?,
        "an earlier cut-off given later must not move the cut-off back"
    );
    b.revoke_subject(&sub, now + Duration::from_secs(5)).await?;
    assert!(
        a.check(&claims(&id("jx"), &sub, now_s + 1)).await?,
        "a later cut-off must move the cut-off forward"
    );
    assert!(
        !a.check(&claims(&id("jx"), &sub, now_s + 6)).await?,
        "a token issued after the moved cut-off must pass"
    );

    // Until expiry, then gone; never shortened.
    let now = SystemTime::now();
    a.revoke(&id("short"), now + SHORT).await?;
    a.revoke(&id("kept"), now + Duration::from_secs(3600))
        .await?;
    b.revoke(&id("kept"), now + SHORT).await?;
    assert!(
        a.is_revoked(&id("short")).await?,
        "a token must be revoked until its expiry"
    );
    time.pass(SHORT + margin + Duration::from_millis(600)).await;
    assert!(
        !a.is_revoked(&id("short")).await?,
        "a revocation must be gone once the token's expiry (plus the stated margin {margin:?}) has passed"
    );
    let iat = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    assert!(
        !b.check(&claims(&id("short"), &id("clean-sub"), iat))
            .await?,
        "check must pass a token whose revocation has expired"
    );
    assert!(
        a.is_revoked(&id("kept")).await?,
        "revoking again with an earlier expiry must not shorten the revocation"
    );
    Ok(())
}
