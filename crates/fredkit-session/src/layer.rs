//! The tower layer ([`SessionLayer`]), the per-request [`Session`] handle
//! (an axum extractor with feature `axum`) and the cookie settings.

use std::{
    fmt,
    future::Future,
    pin::Pin,
    sync::{Arc, Mutex, MutexGuard},
    task::{Context, Poll},
    time::Duration,
};

use cookie::{Cookie, CookieJar, Key, SameSite};
use fredkit_core::{FailMode, Result};
use http::{header, HeaderValue, Request, Response, StatusCode};
use serde::{de::DeserializeOwned, Serialize};
use tower_layer::Layer;
use tower_service::Service;

use crate::{
    id::SessionId,
    store::{decode, Changes, SaveOutcome, SessionRecord, Sessions},
};

/// How the session cookie is protected.
#[derive(Clone, Default)]
#[non_exhaustive]
pub enum CookieProtection {
    /// The id as it is (it is already 192 random bits; nothing to forge).
    #[default]
    Plain,
    /// Signed with HMAC-SHA256 under the key (the `cookie` crate's signed
    /// jar): a cookie not signed with the key is "no session".
    Signed(Key),
    /// Encrypted and authenticated with AES-256-GCM under the key (the
    /// `cookie` crate's private jar): the id (and the user tag in it) is
    /// unreadable to the browser.
    Private(Key),
}

impl fmt::Debug for CookieProtection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            CookieProtection::Plain => "Plain",
            CookieProtection::Signed(_) => "Signed(<key>)",
            CookieProtection::Private(_) => "Private(<key>)",
        })
    }
}

/// The session cookie: name, attributes and protection.
///
/// Defaults: name `id`, path `/`, `HttpOnly`, `Secure`, `SameSite=Lax`, no
/// `Max-Age` (a browser-session cookie; the server's idle and absolute
/// timeouts end the session), [`CookieProtection::Plain`].
#[derive(Clone, Debug)]
pub struct CookieConfig {
    name: String,
    path: String,
    domain: Option<String>,
    secure: bool,
    http_only: bool,
    same_site: SameSite,
    max_age: Option<Duration>,
    protection: CookieProtection,
}

impl Default for CookieConfig {
    fn default() -> Self {
        CookieConfig::new()
    }
}

impl CookieConfig {
    /// The defaults (see the type docs).
    pub fn new() -> CookieConfig {
        CookieConfig {
            name: "id".into(),
            path: "/".into(),
            domain: None,
            secure: true,
            http_only: true,
            same_site: SameSite::Lax,
            max_age: None,
            protection: CookieProtection::Plain,
        }
    }

    /// The cookie's name. Default `id` (a name that says nothing about the
    /// stack, as OWASP advises).
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    /// The `Path` attribute. Default `/`.
    pub fn path(mut self, path: impl Into<String>) -> Self {
        self.path = path.into();
        self
    }

    /// The `Domain` attribute. Default none (this host only).
    pub fn domain(mut self, domain: impl Into<String>) -> Self {
        self.domain = Some(domain.into());
        self
    }

    /// The `Secure` attribute (HTTPS only). Default `true`; turn it off for
    /// local development over plain HTTP only.
    pub fn secure(mut self, secure: bool) -> Self {
        self.secure = secure;
        self
    }

    /// The `HttpOnly` attribute. Default `true` (scripts cannot read the id).
    pub fn http_only(mut self, http_only: bool) -> Self {
        self.http_only = http_only;
        self
    }

    /// The `SameSite` attribute. Default `Lax`.
    pub fn same_site(mut self, same_site: SameSite) -> Self {
        self.same_site = same_site;
        self
    }

    /// A `Max-Age` (a persistent cookie, re-sent on every response so it
    /// slides with the session). Default none.
    pub fn max_age(mut self, max_age: Duration) -> Self {
        self.max_age = Some(max_age);
        self
    }

    /// Signs or encrypts the cookie. Default [`CookieProtection::Plain`].
    pub fn protection(mut self, protection: CookieProtection) -> Self {
        self.protection = protection;
        self
    }

    /// The session id in the request's `Cookie` headers: `(present, id)`.
    /// A cookie that is not ours (unsigned, tampered, not an id) is present
    /// but no id.
    fn read<B>(&self, req: &Request<B>) -> (bool, Option<SessionId>) {
        let mut jar = CookieJar::new();
        for value in req.headers().get_all(header::COOKIE) {
            let Ok(text) = value.to_str() else { continue };
            for c in Cookie::split_parse(text).flatten() {
                if c.name() == self.name {
                    jar.add_original(c.into_owned());
                }
            }
        }
        if jar.get(&self.name).is_none() {
            return (false, None);
        }
        let value = match &self.protection {
            CookieProtection::Plain => jar.get(&self.name).map(|c| c.value().to_owned()),
            CookieProtection::Signed(key) => jar
                .signed(key)
                .get(&self.name)
                .map(|c| c.value().to_owned()),
            CookieProtection::Private(key) => jar
                .private(key)
                .get(&self.name)
                .map(|c| c.value().to_owned()),
        };
        (true, value.as_deref().and_then(SessionId::parse))
    }

    fn base(&self, value: String) -> Cookie<'static> {
        let mut c = Cookie::build((self.name.clone(), value))
            .path(self.path.clone())
            .secure(self.secure)
            .http_only(self.http_only)
            .same_site(self.same_site);
        if let Some(d) = &self.domain {
            c = c.domain(d.clone());
        }
        c.build()
    }

    /// The `Set-Cookie` value carrying `id`.
    fn set(&self, id: &SessionId) -> Option<HeaderValue> {
        let mut c = self.base(id.expose_secret());
        if let Some(age) = self.max_age {
            let secs = i64::try_from(age.as_secs()).unwrap_or(i64::MAX);
            c.set_max_age(cookie::time::Duration::seconds(secs));
        }
        let c = match &self.protection {
            CookieProtection::Plain => c,
            CookieProtection::Signed(key) => {
                let mut jar = CookieJar::new();
                jar.signed_mut(key).add(c);
                jar.get(&self.name)?.clone()
            }
            CookieProtection::Private(key) => {
                let mut jar = CookieJar::new();
                jar.private_mut(key).add(c);
                jar.get(&self.name)?.clone()
            }
        };
        HeaderValue::from_str(&c.to_string()).ok()
    }

    /// The `Set-Cookie` value removing the cookie.
    fn removal(&self) -> Option<HeaderValue> {
        let mut c = self.base(String::new());
        c.make_removal();
        HeaderValue::from_str(&c.to_string()).ok()
    }
}

/// What the handler asked for besides field changes.
#[derive(Clone, Debug, Default)]
enum Action {
    #[default]
    None,
    /// A new id; `Some(user)` signs in.
    CycleId {
        user: Option<String>,
        device: Option<String>,
    },
    /// End the session.
    Destroy,
}

#[derive(Debug, Default)]
struct State {
    record: Option<SessionRecord>,
    changes: Changes,
    action: Action,
    /// Redis failed on load and the fail mode is open: nothing is saved.
    degraded: bool,
}

/// The session of one request, handed to handlers by [`SessionLayer`]
/// (in the request extensions; with feature `axum` it is an extractor).
///
/// Reads come from the record loaded for the request plus this request's
/// own changes; writes are staged here and saved per field when the
/// response is ready — only the changed fields, so concurrent requests that
/// change different fields both persist (see [`Sessions::save`]).
/// Counters ([`increment`](Self::increment)) add up server-side across
/// concurrent requests.
///
/// Cheap to clone (shared state). `Debug` never shows the id.
#[derive(Clone, Default)]
pub struct Session {
    state: Arc<Mutex<State>>,
}

impl fmt::Debug for Session {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = self.lock();
        f.debug_struct("Session")
            .field("exists", &s.record.is_some())
            .field("pending_changes", &!s.changes.is_empty())
            .finish_non_exhaustive()
    }
}

impl Session {
    fn new(record: Option<SessionRecord>, degraded: bool) -> Session {
        Session {
            state: Arc::new(Mutex::new(State {
                record,
                degraded,
                ..State::default()
            })),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // No code path panics while holding the lock; a poisoned lock still
        // holds consistent data.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Value `name`: this request's own change if any, else the loaded one.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Codec`](crate::ErrorKind::Codec) naming the field when
    /// the bytes do not decode as `T`.
    pub fn get<T: DeserializeOwned>(&self, name: &str) -> Result<Option<T>> {
        let s = self.lock();
        match s.changes.value(name) {
            Some(Some(b)) => decode(name, b).map(Some),
            Some(None) => Ok(None),
            None => match &s.record {
                Some(r) => r.get(name),
                None => Ok(None),
            },
        }
    }

    /// Sets value `name` (saved when the response is ready; only this field
    /// is written).
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Codec`](crate::ErrorKind::Codec) when `value` cannot be
    /// encoded.
    pub fn insert<T: Serialize + ?Sized>(&self, name: &str, value: &T) -> Result<()> {
        self.lock().changes.set(name, value).map(drop)
    }

    /// Removes value and counter `name`.
    pub fn remove(&self, name: &str) {
        self.lock().changes.remove(name);
    }

    /// Adds `by` to counter `name`, server-side, when the response is ready.
    pub fn increment(&self, name: &str, by: i64) {
        self.lock().changes.increment(name, by);
    }

    /// Counter `name` as loaded plus this request's own increments (other
    /// requests' concurrent increments are counted in Redis, not here).
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Protocol`](crate::ErrorKind::Protocol) when the stored
    /// counter is garbage.
    pub fn counter(&self, name: &str) -> Result<i64> {
        let s = self.lock();
        let (reset, add) = s.changes.counter_change(name);
        let base = match (&s.record, reset) {
            (Some(r), false) => r.counter(name)?,
            _ => 0,
        };
        Ok(base.saturating_add(add))
    }

    /// The signed-in user (as loaded, or as [`sign_in`](Self::sign_in) set
    /// it in this request).
    pub fn user(&self) -> Option<String> {
        let s = self.lock();
        if let Action::CycleId {
            user: Some(user), ..
        } = &s.action
        {
            return Some(user.clone());
        }
        s.record.as_ref().and_then(|r| r.user().map(str::to_owned))
    }

    /// Whether a session existed in Redis when the request came in.
    pub fn exists(&self) -> bool {
        self.lock().record.is_some()
    }

    /// Signs `user` in: when the response is ready the session gets a new id
    /// (stops fixation) tagged for the user, is listed in
    /// [`Sessions::sessions_of`], and is ended by
    /// [`Sessions::revoke_all`]. Values and counters are kept.
    pub fn sign_in(&self, user: &str, device: Option<&str>) {
        self.lock().action = Action::CycleId {
            user: Some(user.to_owned()),
            device: device.map(str::to_owned),
        };
    }

    /// Gives the session a new id when the response is ready (keeps its
    /// data and user).
    pub fn cycle_id(&self) {
        let mut s = self.lock();
        if matches!(s.action, Action::None) {
            s.action = Action::CycleId {
                user: None,
                device: None,
            };
        }
    }

    /// Ends the session (sign-out): deleted from Redis and the cookie
    /// removed when the response is ready; this request's changes are
    /// dropped.
    pub fn destroy(&self) {
        self.lock().action = Action::Destroy;
    }

    fn take(&self) -> State {
        std::mem::take(&mut *self.lock())
    }
}

#[cfg(feature = "axum")]
impl<S: Send + Sync> axum_core::extract::FromRequestParts<S> for Session {
    type Rejection = (StatusCode, &'static str);

    async fn from_request_parts(
        parts: &mut http::request::Parts,
        _state: &S,
    ) -> std::result::Result<Self, Self::Rejection> {
        parts.extensions.get::<Session>().cloned().ok_or((
            StatusCode::INTERNAL_SERVER_ERROR,
            "fredkit-session: this route has no SessionLayer",
        ))
    }
}

/// A tower [`Layer`] giving every request its [`Session`]: it reads the
/// session cookie, loads the session (one round trip, which also slides the
/// expiry), runs the inner service, then saves only what the handler changed
/// (one round trip, none when nothing changed) and sets or removes the
/// cookie.
///
/// | request | Redis | response |
/// |---|---|---|
/// | no cookie, or a cookie that is not a valid id (tampered, unsigned, foreign) | — (no load) | the handler's; a fresh session is created only if the handler writes; a bad cookie is removed |
/// | a valid id of no live session (expired, revoked, garbage) | load: none | as above |
/// | a live session | load | the handler's; changes saved per field |
/// | any | down, [`FailMode::Closed`] (default) | **503**, the handler is not called (load), or the handler's response is replaced by 503 (save) |
/// | any | down, [`FailMode::Open`] | the handler runs without a session; its changes are dropped (a warning is logged) |
///
/// No log line holds a session id. Layer order: anything that needs the
/// session (auth) goes inside it (in axum, `.layer()` it before this one).
#[derive(Clone, Debug)]
pub struct SessionLayer {
    sessions: Sessions,
    cookie: Arc<CookieConfig>,
    fail_mode: FailMode,
}

impl SessionLayer {
    /// A layer over `sessions` with `cookie` settings, failing closed (503)
    /// when Redis is unavailable.
    pub fn new(sessions: &Sessions, cookie: CookieConfig) -> SessionLayer {
        SessionLayer {
            sessions: sessions.clone(),
            cookie: Arc::new(cookie),
            fail_mode: FailMode::Closed,
        }
    }

    /// What to do when Redis is unavailable: [`FailMode::Closed`] (default)
    /// answers 503; [`FailMode::Open`] serves the request without a session
    /// and drops its changes (for public pages that only use a session for
    /// extras).
    pub fn fail_mode(mut self, fail_mode: FailMode) -> SessionLayer {
        self.fail_mode = fail_mode;
        self
    }
}

impl<S> Layer<S> for SessionLayer {
    type Service = SessionService<S>;

    fn layer(&self, inner: S) -> SessionService<S> {
        SessionService {
            inner,
            layer: self.clone(),
        }
    }
}

/// The service of a [`SessionLayer`].
#[derive(Clone, Debug)]
pub struct SessionService<S> {
    inner: S,
    layer: SessionLayer,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

impl<S, ReqB, ResB> Service<Request<ReqB>> for SessionService<S>
where
    S: Service<Request<ReqB>, Response = Response<ResB>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    ReqB: Send + 'static,
    ResB: Default + Send + 'static,
{
    type Response = Response<ResB>;
    type Error = S::Error;
    type Future = BoxFuture<std::result::Result<Response<ResB>, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<std::result::Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<ReqB>) -> Self::Future {
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let layer = self.layer.clone();
        Box::pin(async move {
            let (had_cookie, id) = layer.cookie.read(&req);
            let mut degraded = false;
            let record = match &id {
                None => None,
                Some(id) => match layer.sessions.load(id).await {
                    Ok(r) => r,
                    Err(e) => {
                        if layer.fail_mode.lets_through() {
                            layer.sessions.metrics().unavailable_passed.increment(1);
                            tracing::warn!(error = %e, "fredkit-session could not load the session; serving the request without one (fail open)");
                            degraded = true;
                            None
                        } else {
                            layer.sessions.metrics().unavailable_refused.increment(1);
                            tracing::warn!(error = %e, "fredkit-session could not load the session; answering 503 (fail closed)");
                            return Ok(unavailable());
                        }
                    }
                },
            };
            let loaded = record.is_some();
            let session = Session::new(record, degraded);
            req.extensions_mut().insert(session.clone());
            let mut res = inner.call(req).await?;
            match finish(&layer, session.take()).await {
                Ok(cookie) => {
                    let cookie = match cookie {
                        // A cookie naming no live session is removed (not
                        // when Redis was down: it may name a live one).
                        CookieAction::Keep if had_cookie && !loaded && !degraded => {
                            CookieAction::Remove
                        }
                        other => other,
                    };
                    let value = match cookie {
                        CookieAction::Keep => None,
                        CookieAction::Set(id) => layer.cookie.set(&id),
                        CookieAction::Remove => layer.cookie.removal(),
                    };
                    if let Some(v) = value {
                        res.headers_mut().append(header::SET_COOKIE, v);
                    }
                    Ok(res)
                }
                Err(e) => {
                    if layer.fail_mode.lets_through() {
                        layer.sessions.metrics().unavailable_passed.increment(1);
                        tracing::warn!(error = %e, "fredkit-session could not save the session; its changes are lost (fail open)");
                        Ok(res)
                    } else {
                        layer.sessions.metrics().unavailable_refused.increment(1);
                        tracing::warn!(error = %e, "fredkit-session could not save the session; answering 503 (fail closed)");
                        Ok(unavailable())
                    }
                }
            }
        })
    }
}

enum CookieAction {
    Keep,
    Set(SessionId),
    Remove,
}

/// Saves what the handler did; says what to do with the cookie.
async fn finish(layer: &SessionLayer, state: State) -> Result<CookieAction> {
    let sessions = &layer.sessions;
    let State {
        record,
        changes,
        action,
        degraded,
    } = state;
    if degraded {
        if !changes.is_empty() || !matches!(action, Action::None) {
            tracing::warn!("fredkit-session dropped this request's session changes: Redis was unavailable when it started (fail open)");
        }
        return Ok(CookieAction::Keep);
    }
    match action {
        Action::Destroy => {
            if let Some(r) = &record {
                sessions.delete(r.id()).await?;
            }
            Ok(CookieAction::Remove)
        }
        Action::CycleId { user, device } => {
            let next = match &record {
                Some(r) => {
                    sessions
                        .cycle_id(
                            &r.with_changes(&changes),
                            user.as_deref(),
                            device.as_deref(),
                        )
                        .await?
                }
                None => {
                    sessions
                        .create(user.as_deref(), device.as_deref(), &changes)
                        .await?
                }
            };
            Ok(CookieAction::Set(next.id().clone()))
        }
        Action::None if changes.is_empty() => Ok(match (&record, layer.cookie.max_age) {
            (Some(r), Some(_)) => CookieAction::Set(r.id().clone()),
            _ => CookieAction::Keep,
        }),
        Action::None => match &record {
            Some(r) => match sessions.save(r.id(), &changes).await? {
                SaveOutcome::Saved { .. } if layer.cookie.max_age.is_some() => {
                    Ok(CookieAction::Set(r.id().clone()))
                }
                SaveOutcome::Saved { .. } => Ok(CookieAction::Keep),
                SaveOutcome::Gone => {
                    tracing::debug!("fredkit-session: the session ended during the request; its changes were not saved");
                    Ok(CookieAction::Remove)
                }
            },
            None => {
                let r = sessions.create(None, None, &changes).await?;
                Ok(CookieAction::Set(r.id().clone()))
            }
        },
    }
}

fn unavailable<B: Default>() -> Response<B> {
    let mut res = Response::new(B::default());
    *res.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
    res.headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    res
}
