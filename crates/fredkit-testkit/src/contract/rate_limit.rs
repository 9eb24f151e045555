//! The [`RateLimiter`] contract.

use std::time::Duration;

use fredkit_core::traits::{Decision, RateLimiter};
use fredkit_core::{Error, ErrorKind, Result};

use super::{assert_kind, together, Time};

/// The state of a fresh key, and the policy's limit.
async fn fresh<R: RateLimiter + ?Sized>(l: &R, key: &str) -> Result<Decision> {
    let d = l.check(key, 0).await?;
    assert!(d.allowed, "cost 0 must always be allowed: {d:?}");
    assert_eq!(
        d.remaining, d.limit,
        "a fresh key must have its full limit: {d:?}"
    );
    assert_eq!(
        d.retry_after, None,
        "an allowed decision has no retry_after: {d:?}"
    );
    Ok(d)
}

/// Checks [`RateLimiter`]'s contract on `a` and `b`, two handles onto one store built
/// with the same policy, on keys under `ns`.
///
/// The policy must admit a `limit` of at least 4 at once and refill slowly: no unit may
/// come back while the suite runs (a window or refill time of an hour or more), since
/// the suite counts exactly. Any algorithm whose first window admits exactly `limit`
/// (fixed window, sliding log, sliding counter, GCRA with its burst as the limit) fits.
///
/// Asserts: a fresh key reports its full limit; `limit` checks of cost 1, alternating
/// handles, are allowed with `remaining` counting down by one; a cost above `remaining`
/// is denied with a `retry_after` and consumes nothing (`remaining` unchanged), then the
/// exact `remaining` is allowed; denied checks repeated consume nothing: `remaining`
/// stays 0 and neither `retry_after` nor `reset_after` grows; cost 0 is allowed and
/// consumes nothing also on an exhausted key; a cost above the limit is `InvalidInput`;
/// keys are independent; `3 × limit` concurrent checks through both handles admit
/// exactly `limit`; concurrent checks of mixed costs consume exactly what they were
/// admitted. `0 ≤ remaining ≤ limit` and `limit` constant throughout.
///
/// # Errors
///
/// An unexpected error of the implementation (the suite panics on a broken promise).
pub async fn rate_limiter<R: RateLimiter + ?Sized>(a: &R, b: &R, ns: &str) -> Result<()> {
    let key = |k: &str| format!("{ns}:{k}");
    let k = key("main");
    let start = fresh(a, &k).await?;
    let limit = start.limit;
    assert!(
        limit >= 4,
        "the contract needs a policy admitting at least 4 at once (got {limit})"
    );
    let check_shape = |d: &Decision| {
        assert_eq!(d.limit, limit, "limit must stay the policy's: {d:?}");
        assert!(
            d.remaining <= d.limit,
            "remaining must not exceed the limit: {d:?}"
        );
        assert_eq!(
            d.allowed,
            d.retry_after.is_none(),
            "retry_after must be set exactly when denied: {d:?}"
        );
    };
    let cost_of =
        |n: u64| u32::try_from(n).map_err(|_| Error::invalid_input("contract: limit too large"));

    assert_kind(
        a.check(&k, cost_of(limit + 1)?).await,
        ErrorKind::InvalidInput,
        "a cost above the limit",
    );
    assert_eq!(
        a.check(&k, 0).await?.remaining,
        limit,
        "a refused cost must consume nothing"
    );

    // Count down, across handles.
    for i in 0..limit - 1 {
        let l = if i % 2 == 0 { a } else { b };
        let d = l.check(&k, 1).await?;
        check_shape(&d);
        assert!(
            d.allowed,
            "check {} of {limit} must be allowed: {d:?}",
            i + 1
        );
        assert_eq!(
            d.remaining,
            limit - 1 - i,
            "remaining must count down by the cost: {d:?}"
        );
        assert!(
            !d.reset_after.is_zero(),
            "after consuming, reset_after must be positive: {d:?}"
        );
    }
    // One left: 2 is denied and consumes nothing, 1 is allowed.
    let d = b.check(&k, 2).await?;
    check_shape(&d);
    assert!(
        !d.allowed,
        "a cost above remaining (1) must be denied: {d:?}"
    );
    assert_eq!(d.remaining, 1, "a denied check must consume nothing: {d:?}");
    assert!(
        d.retry_after.is_some_and(|r| !r.is_zero()),
        "a denial must say how long to wait: {d:?}"
    );
    let d = a.check(&k, 0).await?;
    assert!(
        d.allowed && d.remaining == 1,
        "cost 0 must report the state: {d:?}"
    );
    let d = a.check(&k, 1).await?;
    check_shape(&d);
    assert!(
        d.allowed && d.remaining == 0,
        "the last unit must be allowed: {d:?}"
    );

    // Hammering a closed limit consumes nothing and pushes nothing further away.
    let mut prev: Option<Decision> = None;
    for i in 0..12 {
        let l = if i % 2 == 0 { a } else { b };
        let d = l.check(&k, 1).await?;
        check_shape(&d);
        assert!(
            !d.allowed,
            "an exhausted key must deny (attempt {i}): {d:?}"
        );
        assert_eq!(d.remaining, 0, "an exhausted key has nothing left: {d:?}");
        if let Some(p) = prev {
            assert!(
                d.retry_after <= p.retry_after,
                "a denied check must not push retry_after further away: {p:?} then {d:?}"
            );
            assert!(
                d.reset_after <= p.reset_after,
                "a denied check must not push reset_after further away: {p:?} then {d:?}"
            );
        }
        prev = Some(d);
    }
    let d = b.check(&k, 0).await?;
    check_shape(&d);
    assert!(
        d.allowed && d.remaining == 0,
        "cost 0 on an exhausted key must be allowed and report 0: {d:?}"
    );

    // Keys apart.
    fresh(b, &key("other")).await?;

    // Concurrent cost-1 checks: exactly `limit` admitted.
    let raced = key("raced");
    let n = usize::try_from(limit.saturating_mul(3))
        .unwrap_or(usize::MAX)
        .min(3000);
    let tries = (0..n).map(|i| {
        let l = if i % 2 == 0 { a } else { b };
        let raced = &raced;
        async move { l.check(raced, 1).await }
    });
    let mut admitted = 0u64;
    for d in together(tries).await {
        let d = d?;
        check_shape(&d);
        admitted += u64::from(d.allowed);
    }
    assert_eq!(
        admitted, limit,
        "{n} concurrent checks of cost 1 must admit exactly the limit"
    );
    assert_eq!(
        a.check(&raced, 0).await?.remaining,
        0,
        "the raced key must be exhausted"
    );

    // Concurrent mixed costs: consumed exactly what was admitted.
    let mixed = key("mixed");
    let costs: Vec<u64> = (0..16u64).map(|i| 1 + i % 3).collect();
    let tries = costs.iter().enumerate().map(|(i, c)| {
        let l = if i % 2 == 0 { a } else { b };
        let mixed = &mixed;
        let c = u32::try_from(*c).unwrap_or(1);
        async move { l.check(mixed, c).await }
    });
    let mut consumed = 0u64;
    let mut smallest_denied: Option<u64> = None;
    for (d, c) in together(tries).await.into_iter().zip(&costs) {
        let d = d?;
        check_shape(&d);
        if d.allowed {
            consumed += c;
        } else {
            smallest_denied = Some(smallest_denied.map_or(*c, |s| s.min(*c)));
        }
    }
    assert!(
        consumed <= limit,
        "concurrent checks must never admit more than the limit ({consumed} > {limit})"
    );
    if let Some(denied) = smallest_denied {
        // Denied for want of room: at that moment less than `denied` was left, and
        // what is left only shrinks.
        assert!(
            limit - consumed < denied,
            "a check of cost {denied} was denied, yet {} of {limit} is left unused",
            limit - consumed
        );
    }
    assert_eq!(
        a.check(&mixed, 0).await?.remaining,
        limit - consumed,
        "the key must have consumed exactly the admitted costs"
    );
    Ok(())
}

/// Checks that `limiter` (a policy with a short window, a limit of at least 2, e.g. 5 per
/// 300 ms) refills as its decisions say, on keys under `ns`: after exhausting a key,
/// waiting the denial's `retry_after` admits the same request, and waiting an exhausted
/// key's `reset_after` restores the full limit. Waits go only the safe way (at least what
/// the decision said), so a slow machine cannot fail a correct limiter.
///
/// # Errors
///
/// An unexpected error of the implementation (the suite panics on a broken promise).
pub async fn rate_limiter_refill<R: RateLimiter + ?Sized>(
    limiter: &R,
    ns: &str,
    time: &Time,
) -> Result<()> {
    let margin = Duration::from_millis(5);
    let k = format!("{ns}:refill");
    let limit = fresh(limiter, &k).await?.limit;
    assert!(
        limit >= 2,
        "the refill contract needs a limit of at least 2 (got {limit})"
    );

    // Exhaust (the key may refill a little meanwhile on a slow machine: go until denied).
    let exhaust = |tag: &'static str| {
        let k = &k;
        async move {
            for _ in 0..limit.saturating_mul(20) {
                let d = limiter.check(k, 1).await?;
                if !d.allowed {
                    return Ok::<Decision, fredkit_core::Error>(d);
                }
            }
            Err(fredkit_core::Error::protocol(format!(
                "contract ({tag}): {} checks of cost 1 never denied a limit of {limit}",
                limit.saturating_mul(20)
            )))
        }
    };
    let denied = exhaust("retry").await?;
    let Some(retry) = denied.retry_after else {
        return Err(fredkit_core::Error::protocol(
            "contract: a denial without retry_after",
        ));
    };
    time.pass(retry + margin).await;
    let d = limiter.check(&k, 1).await?;
    assert!(
        d.allowed,
        "after waiting retry_after ({retry:?}) the same request must be allowed: {d:?}"
    );

    exhaust("reset").await?;
    let state = limiter.check(&k, 0).await?;
    assert!(
        !state.reset_after.is_zero(),
        "an exhausted key must take time to reset: {state:?}"
    );
    time.pass(state.reset_after + margin).await;
    let d = limiter.check(&k, 0).await?;
    assert_eq!(
        d.remaining, limit,
        "after waiting reset_after ({:?}) the key must be back to its full limit: {d:?}",
        state.reset_after
    );
    Ok(())
}
