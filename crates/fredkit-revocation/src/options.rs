//! [`RevocationOptions`]: how a [`Revocations`](crate::Revocations) store behaves.

use fredkit_core::IntoKeySpace;
use std::time::Duration;

use fredkit_core::{CircuitBreaker, Error, FailMode, KeySpace, Result};

/// The default key prefix.
pub const DEFAULT_PREFIX: &str = "fredkit:revocation";

/// How a [`Revocations`](crate::Revocations) store behaves. Built with
/// [`RevocationOptions::builder`], which takes the [`FailMode`] — there is no
/// default for it.
///
/// ```
/// use std::time::Duration;
/// use fredkit_core::FailMode;
/// use fredkit_revocation::RevocationOptions;
///
/// let options = RevocationOptions::builder(FailMode::Closed) // outage: refuse tokens
///     .prefix("auth:revocation")                            // keys and channel under it
///     .max_token_lifetime(Duration::from_secs(3600))        // longest exp - iat you issue
///     .expiry_leeway(Duration::from_secs(61))               // jsonwebtoken's 60 s + its last second
///     .build()?;
/// assert_eq!(options.fail_mode(), FailMode::Closed);
/// # Ok::<(), fredkit_core::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct RevocationOptions {
    pub(crate) fail_mode: FailMode,
    pub(crate) keys: KeySpace,
    pub(crate) max_token_lifetime: Duration,
    pub(crate) expiry_leeway: Duration,
    pub(crate) breaker: CircuitBreaker,
    pub(crate) publish_events: bool,
    #[cfg(feature = "local-cache")]
    pub(crate) local_cache: Option<crate::LocalCacheOptions>,
}

impl RevocationOptions {
    /// A builder with the given fail mode and the documented defaults.
    pub fn builder(fail_mode: FailMode) -> RevocationOptionsBuilder {
        RevocationOptionsBuilder {
            fail_mode,
            prefix: KeySpace::new(DEFAULT_PREFIX).map_err(|e| e.to_string()),
            max_token_lifetime: Duration::from_secs(24 * 3600),
            expiry_leeway: Duration::ZERO,
            breaker: None,
            publish_events: true,
            #[cfg(feature = "local-cache")]
            local_cache: None,
        }
    }

    /// What reads answer when Redis is unavailable.
    pub fn fail_mode(&self) -> FailMode {
        self.fail_mode
    }

    /// The key space every key (and the event channel) lives under.
    pub fn keys(&self) -> &KeySpace {
        &self.keys
    }

    /// The longest token lifetime (`exp - iat`) the store covers.
    pub fn max_token_lifetime(&self) -> Duration {
        self.max_token_lifetime
    }

    /// How long past `exp` records are kept.
    pub fn expiry_leeway(&self) -> Duration {
        self.expiry_leeway
    }

    /// Whether revocations are published on `prefix:events` for the local
    /// caches of other instances.
    pub fn publish_events(&self) -> bool {
        self.publish_events
    }

    /// The local cache settings, if the local cache is on.
    #[cfg(feature = "local-cache")]
    #[cfg_attr(docsrs, doc(cfg(feature = "local-cache")))]
    pub fn local_cache(&self) -> Option<&crate::LocalCacheOptions> {
        self.local_cache.as_ref()
    }
}

/// Builds [`RevocationOptions`]; every method documents its default.
#[must_use]
#[derive(Debug, Clone)]
pub struct RevocationOptionsBuilder {
    fail_mode: FailMode,
    // A bad prefix is reported by build(); kept as its message so that the
    // builder stays Clone.
    prefix: std::result::Result<KeySpace, String>,
    max_token_lifetime: Duration,
    expiry_leeway: Duration,
    breaker: Option<CircuitBreaker>,
    publish_events: bool,
    #[cfg(feature = "local-cache")]
    local_cache: Option<crate::LocalCacheOptions>,
}

impl RevocationOptionsBuilder {
    /// The key prefix: keys are `prefix:jti:<jti>`, `prefix:sub:<sub>`,
    /// `prefix:org:<org>`, `prefix:active:<sub>`, and the local-cache event
    /// channel is `prefix:events`. Default `"fredkit:revocation"`. Must be a
    /// valid [`KeySpace`] prefix.
    pub fn prefix(mut self, prefix: impl IntoKeySpace) -> Self {
        self.prefix = prefix.into_key_space().map_err(|e| match e {
            Error::InvalidInput(message) => message,
            other => other.to_string(),
        });
        self
    }

    /// The longest lifetime (`exp - iat`) of the tokens you issue. A
    /// subject or organisation cut-off is kept this long after the cut-off
    /// (plus the leeway), since every token it covers has expired by then;
    /// [`check`](crate::Revocations::check) refuses with
    /// [`ErrorKind::InvalidInput`](fredkit_core::ErrorKind::InvalidInput) a
    /// token that lives longer, because its cut-off could vanish before it
    /// expires. Default 24 h; must be at least 1 s.
    pub fn max_token_lifetime(mut self, lifetime: Duration) -> Self {
        self.max_token_lifetime = lifetime;
        self
    }

    /// How long after a token's `exp` its records are kept: set it to the
    /// last moment past `exp` your JWT validator still accepts a token, so
    /// that a token the validator accepts is still found revoked. Default 0
    /// (records go exactly at `exp`: right for a validator that, as RFC 7519
    /// says, accepts a token only *before* `exp`). At most 1 hour.
    ///
    /// **Mind whole seconds.** The `jsonwebtoken` crate compares whole
    /// seconds and refuses a token only when `exp < now - leeway`: it
    /// accepts it through the whole second `exp + leeway`, i.e. until
    /// `exp + leeway + 1 s`. With it, use its leeway **plus 1 s** (61 s for
    /// its default 60 s; 1 s with leeway 0), or a revoked token is accepted
    /// for up to a second after its record is gone.
    pub fn expiry_leeway(mut self, leeway: Duration) -> Self {
        self.expiry_leeway = leeway;
        self
    }

    /// The circuit breaker the store's Redis calls go through. Default:
    /// fredkit-core's defaults (opens at 50 % failures over 10 calls in
    /// 10 s, stays open 5 s) named `"revocation"`. Pass a clone to share one
    /// breaker between primitives on the same server.
    pub fn circuit_breaker(mut self, breaker: CircuitBreaker) -> Self {
        self.breaker = Some(breaker);
        self
    }

    /// Whether every revocation made through this store is published on
    /// `prefix:events` (one `PUBLISH` after the write), so that the stores
    /// with the local cache on — in any process — learn of it at once.
    /// Default `true`, with or without the local cache on this store: an
    /// admin service that only revokes must still reach the caching API
    /// instances (without the event they would miss it for up to their
    /// cache `ttl`). Turn it off only when no store with the same prefix
    /// uses the local cache; it saves that one round trip per revocation.
    pub fn publish_events(mut self, publish: bool) -> Self {
        self.publish_events = publish;
        self
    }

    /// Turns the in-process cache on (see [`LocalCacheOptions`](crate::LocalCacheOptions)
    /// for what it guarantees). Default: off.
    #[cfg(feature = "local-cache")]
    #[cfg_attr(docsrs, doc(cfg(feature = "local-cache")))]
    pub fn local_cache(mut self, cache: crate::LocalCacheOptions) -> Self {
        self.local_cache = Some(cache);
        self
    }

    /// Validates and builds.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::InvalidInput`](fredkit_core::ErrorKind::InvalidInput) for
    /// a bad prefix; [`ErrorKind::Config`](fredkit_core::ErrorKind::Config)
    /// for a max token lifetime under 1 s, a leeway over 1 hour, or invalid
    /// local cache settings.
    pub fn build(self) -> Result<RevocationOptions> {
        let keys = self.prefix.map_err(Error::invalid_input)?;
        if self.max_token_lifetime < Duration::from_secs(1) {
            return Err(Error::config(format!(
                "revocation: max_token_lifetime must be at least 1 s (JWT times are whole seconds), got {:?}",
                self.max_token_lifetime
            )));
        }
        if self.max_token_lifetime > Duration::from_secs(10 * 365 * 86_400) {
            return Err(Error::config(format!(
                "revocation: max_token_lifetime must be at most 10 years, got {:?}",
                self.max_token_lifetime
            )));
        }
        if self.expiry_leeway > Duration::from_secs(3600) {
            return Err(Error::config(format!(
                "revocation: expiry_leeway must be at most 1 hour, got {:?}",
                self.expiry_leeway
            )));
        }
        #[cfg(feature = "local-cache")]
        if let Some(cache) = &self.local_cache {
            cache.validate()?;
        }
        let breaker = match self.breaker {
            Some(b) => b,
            None => CircuitBreaker::builder().name("revocation").build()?,
        };
        Ok(RevocationOptions {
            fail_mode: self.fail_mode,
            keys,
            max_token_lifetime: self.max_token_lifetime,
            expiry_leeway: self.expiry_leeway,
            breaker,
            publish_events: self.publish_events,
            #[cfg(feature = "local-cache")]
            local_cache: self.local_cache,
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use fredkit_core::ErrorKind;

    #[test]
    fn defaults_are_the_documented_values() {
        let o = RevocationOptions::builder(FailMode::Open).build().unwrap();
        assert_eq!(o.fail_mode(), FailMode::Open);
        assert_eq!(o.keys().prefix(), "fredkit:revocation");
        assert_eq!(o.max_token_lifetime(), Duration::from_secs(86_400));
        assert_eq!(o.expiry_leeway(), Duration::ZERO);
        assert_eq!(o.breaker.name(), "revocation");
        assert!(o.publish_events());
        #[cfg(feature = "local-cache")]
        assert!(o.local_cache().is_none());
    }

    #[test]
    fn invalid_settings_are_errors_at_build() {
        let b = || RevocationOptions::builder(FailMode::Closed);
        assert_eq!(
            b().prefix("a{b}").build().unwrap_err().kind(),
            ErrorKind::InvalidInput
        );
        assert_eq!(
            b().max_token_lifetime(Duration::from_millis(999))
                .build()
                .unwrap_err()
                .kind(),
            ErrorKind::Config
        );
        assert_eq!(
            b().expiry_leeway(Duration::from_secs(3601))
                .build()
                .unwrap_err()
                .kind(),
            ErrorKind::Config
        );
        assert!(b()
            .max_token_lifetime(Duration::from_secs(1))
            .expiry_leeway(Duration::from_secs(3600))
            .build()
            .is_ok());
    }
}
