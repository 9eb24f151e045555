//! [`MemoryRevocationStore`]: a [`RevocationStore`] in maps.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use fredkit_core::traits::{RevocationStore, TokenClaims};
use fredkit_core::{Clock, Error, Result};

use super::{lock, unix_millis, Sweep, Timebase};

/// A [`RevocationStore`] in process memory, with fredkit-revocation's rules, for unit
/// tests of code that revokes or checks tokens.
///
/// Keeps the trait's contract:
/// - `revoke(jti, exp)` revokes the token until `exp` plus the
///   [leeway](Self::expiry_leeway) (the stated margin; default 0), then forgets it; an
///   earlier `exp` given again never shortens a record; a token already past its expiry is
///   not recorded (`Ok`, nothing to revoke).
/// - `revoke_subject(sub, at)` revokes every token of `sub` with `iat` at or before the
///   second of `at` (rounded down, as JWT times are whole seconds); the cut-off only moves
///   forward and is forgotten once every token it covers has expired (`cut-off +
///   max_token_lifetime + leeway`).
/// - `check` refuses a token revoked by id, by subject, or (see
///   [`revoke_org`](Self::revoke_org)) by organisation.
///
/// Like fredkit-revocation's `Revocations` it refuses an empty `jti`/`sub`/`org` and a
/// token living longer (`exp - iat`) than the [max token
/// lifetime](Self::max_token_lifetime) (default 24 h) with
/// [`ErrorKind::InvalidInput`](fredkit_core::ErrorKind::InvalidInput). Wall time is the
/// time the store was built plus its [`Clock`]'s elapsed time, so a
/// [`ManualClock`](fredkit_core::ManualClock) expires records without sleeping.
///
/// Clones share the records. No [`FailMode`](fredkit_core::FailMode): an in-memory read
/// never meets an outage; no events or local cache (see the [module docs](crate::memory)).
///
/// ```
/// use std::time::{Duration, SystemTime};
/// use fredkit_core::traits::RevocationStore;
/// use fredkit_testkit::memory::MemoryRevocationStore;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> fredkit_core::Result<()> {
/// let store = MemoryRevocationStore::new();
/// store.revoke("jti-1", SystemTime::now() + Duration::from_secs(600)).await?;
/// assert!(store.is_revoked("jti-1").await?);
/// assert!(!store.is_revoked("jti-2").await?);
/// # Ok(())
/// # }
/// ```
#[derive(Clone, Debug)]
pub struct MemoryRevocationStore {
    state: Arc<Mutex<State>>,
    time: Timebase,
    max_lifetime: Duration,
    leeway: Duration,
}

impl Default for MemoryRevocationStore {
    fn default() -> Self {
        MemoryRevocationStore {
            state: Arc::default(),
            time: Timebase::default(),
            max_lifetime: Duration::from_secs(24 * 3600),
            leeway: Duration::ZERO,
        }
    }
}

#[derive(Debug, Default)]
struct State {
    /// Revoked ids: until when (Unix ms).
    jtis: HashMap<String, u64>,
    /// Subject and organisation cut-offs: (cut-off in Unix seconds, record end in Unix ms).
    subjects: HashMap<String, (u64, u64)>,
    orgs: HashMap<String, (u64, u64)>,
    sweep: Sweep,
}

fn non_empty(value: &str, what: &str) -> Result<()> {
    if value.is_empty() {
        return Err(Error::invalid_input(format!(
            "revocation: the {what} is empty: pass the token's claim"
        )));
    }
    Ok(())
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

impl MemoryRevocationStore {
    /// An empty store on the system clock, max token lifetime 24 h, leeway 0 (the defaults
    /// of fredkit-revocation's options).
    pub fn new() -> MemoryRevocationStore {
        MemoryRevocationStore::default()
    }

    /// The same store reading time from `clock`. Call it before revoking.
    #[must_use]
    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> MemoryRevocationStore {
        self.time = Timebase::new(clock);
        self
    }

    /// The longest `exp - iat` of the tokens checked: subject cut-offs are kept that long
    /// (plus the leeway). Default 24 h.
    #[must_use]
    pub fn max_token_lifetime(mut self, lifetime: Duration) -> MemoryRevocationStore {
        self.max_lifetime = lifetime;
        self
    }

    /// How long after a token's `exp` its revocation is kept (your JWT validator's
    /// leeway). Default 0.
    #[must_use]
    pub fn expiry_leeway(mut self, leeway: Duration) -> MemoryRevocationStore {
        self.leeway = leeway;
        self
    }

    /// Revokes every token whose `org` claim is `org`, issued at or before `at` (the same
    /// rules as subjects).
    ///
    /// # Errors
    ///
    /// [`ErrorKind::InvalidInput`](fredkit_core::ErrorKind::InvalidInput) for an empty
    /// `org`.
    pub fn revoke_org(&self, org: &str, at: SystemTime) -> Result<()> {
        non_empty(org, "organisation")?;
        self.cutoff(|s| &mut s.orgs, org, at);
        Ok(())
    }

    /// How many revocation records (ids, subjects, organisations) are still kept.
    pub fn records(&self) -> usize {
        let now = self.time.unix_millis();
        let state = lock(&self.state);
        state.jtis.values().filter(|until| **until > now).count()
            + state
                .subjects
                .values()
                .chain(state.orgs.values())
                .filter(|(_, end)| *end > now)
                .count()
    }

    fn cutoff(
        &self,
        map: impl FnOnce(&mut State) -> &mut HashMap<String, (u64, u64)>,
        id: &str,
        at: SystemTime,
    ) {
        let now = self.time.unix_millis();
        let keep = millis(self.max_lifetime).saturating_add(millis(self.leeway));
        let cut = at
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let mut state = lock(&self.state);
        let map = map(&mut state);
        let current = map.get(id).filter(|(_, end)| *end > now).map(|(c, _)| *c);
        let cut = current.map_or(cut, |c| c.max(cut));
        let end = cut.saturating_mul(1000).saturating_add(keep);
        if end > now {
            map.insert(id.to_string(), (cut, end));
        }
    }

    fn sweep(&self) {
        let now = self.time.unix_millis();
        let mut state = lock(&self.state);
        let len = state.jtis.len() + state.subjects.len() + state.orgs.len();
        if state.sweep.due(len) {
            state.jtis.retain(|_, until| *until > now);
            state.subjects.retain(|_, (_, end)| *end > now);
            state.orgs.retain(|_, (_, end)| *end > now);
            let len = state.jtis.len() + state.subjects.len() + state.orgs.len();
            state.sweep.swept(len);
        }
    }
}

/// The live cut-off of `id` in `map` at `now` (Unix ms).
fn live_cut(map: &HashMap<String, (u64, u64)>, id: &str, now: u64) -> Option<u64> {
    map.get(id)
        .filter(|(_, end)| *end > now)
        .map(|(cut, _)| *cut)
}

#[async_trait]
impl RevocationStore for MemoryRevocationStore {
    async fn revoke(&self, jti: &str, expires_at: SystemTime) -> Result<()> {
        non_empty(jti, "token id (jti)")?;
        if expires_at < UNIX_EPOCH {
            return Err(Error::invalid_input(
                "expires_at is before 1970; pass the token's exp",
            ));
        }
        let until = unix_millis(expires_at).saturating_add(millis(self.leeway));
        let now = self.time.unix_millis();
        if until > now {
            let mut state = lock(&self.state);
            let kept = state.jtis.entry(jti.to_string()).or_insert(until);
            *kept = (*kept).max(until);
        }
        self.sweep();
        Ok(())
    }

    async fn is_revoked(&self, jti: &str) -> Result<bool> {
        non_empty(jti, "token id (jti)")?;
        let now = self.time.unix_millis();
        Ok(lock(&self.state)
            .jtis
            .get(jti)
            .is_some_and(|until| *until > now))
    }

    async fn revoke_subject(&self, sub: &str, at: SystemTime) -> Result<()> {
        non_empty(sub, "subject (sub)")?;
        self.cutoff(|s| &mut s.subjects, sub, at);
        self.sweep();
        Ok(())
    }

    async fn check(&self, claims: &TokenClaims) -> Result<bool> {
        non_empty(&claims.jti, "token id (jti)")?;
        non_empty(&claims.sub, "subject (sub)")?;
        if claims.org.as_deref() == Some("") {
            return Err(Error::invalid_input(
                "revocation: the organisation (org) is Some(\"\"): pass None for a token without one",
            ));
        }
        let lifetime = claims.exp.saturating_sub(claims.iat);
        if lifetime > self.max_lifetime.as_secs() {
            return Err(Error::invalid_input(format!(
                "token lives {lifetime} s (exp - iat), longer than the store's max_token_lifetime of {} s: \
                 its subject cut-off could expire before it does; raise max_token_lifetime",
                self.max_lifetime.as_secs()
            )));
        }
        let now = self.time.unix_millis();
        let state = lock(&self.state);
        let by_id = state.jtis.get(&claims.jti).is_some_and(|u| *u > now);
        let by_sub = live_cut(&state.subjects, &claims.sub, now).is_some_and(|c| claims.iat <= c);
        let by_org = claims
            .org
            .as_deref()
            .and_then(|org| live_cut(&state.orgs, org, now))
            .is_some_and(|c| claims.iat <= c);
        Ok(by_id || by_sub || by_org)
    }
}
