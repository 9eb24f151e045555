//! What a primitive does when Redis cannot answer: [`FailMode`].

use serde::{Deserialize, Serialize};

/// What a primitive decides when it cannot reach Redis (connection error,
/// timeout, busy server, open circuit breaker — the errors for which
/// [`Error::is_unavailable`](crate::Error::is_unavailable) is true).
///
/// There is deliberately no default: whether an outage should let everything
/// through or stop everything is a product decision, and the caller makes it.
/// Errors that are not about availability (a bad argument, a corrupt reply)
/// are returned as errors in either mode.
///
/// | primitive     | `Open` means                                   | `Closed` means                              |
/// |---------------|------------------------------------------------|---------------------------------------------|
/// | rate limiting | the request is **allowed** (no limit enforced) | the request is **denied** (as if over limit) |
/// | revocation    | the token is treated as **not revoked**        | the token is treated as **revoked**         |
///
/// Caches always fail open and locks always fail closed; they take no
/// `FailMode`.
///
/// In configuration files the modes are written `"open"` and `"closed"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FailMode {
    /// Fail open: favour availability. While Redis is down, requests are let
    /// through — a rate limiter allows them, a revocation check accepts the
    /// token. Choose it when a short loss of protection hurts less than an
    /// outage of your own service (public read APIs, soft quotas).
    Open,
    /// Fail closed: favour safety. While Redis is down, requests are stopped —
    /// a rate limiter denies them, a revocation check treats every token as
    /// revoked. Choose it when letting a request through could do damage
    /// (login attempts, payments, admin actions, tokens of a compromised
    /// account).
    Closed,
}

impl FailMode {
    /// True for [`FailMode::Open`]: on an outage, let the request through.
    pub fn lets_through(self) -> bool {
        matches!(self, FailMode::Open)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_open_lets_requests_through() {
        assert!(FailMode::Open.lets_through());
        assert!(!FailMode::Closed.lets_through());
    }

    #[test]
    fn config_files_spell_modes_in_lowercase() {
        let open: FailMode = rmp_serde::from_slice(&rmp_serde::to_vec("open").unwrap()).unwrap();
        assert_eq!(open, FailMode::Open);
        let closed: FailMode =
            rmp_serde::from_slice(&rmp_serde::to_vec("closed").unwrap()).unwrap();
        assert_eq!(closed, FailMode::Closed);
        assert!(rmp_serde::from_slice::<FailMode>(&rmp_serde::to_vec("Open").unwrap()).is_err());
    }
}
