//! A tower [`Layer`] that rate-limits HTTP requests (feature `tower`).
//!
//! [`RateLimitLayer`] wraps any `tower::Service<http::Request<B>>` (an axum
//! `Router`, a hyper service): it derives a key from each request with a
//! [`KeyExtractor`] ([`ClientIp`], [`HeaderKey`], or a closure with
//! [`key_fn`]), checks it with a [`Limiter`] (one round trip), and either
//! calls the inner service and adds the rate-limit headers to its response,
//! or answers `429 Too Many Requests` with `Retry-After` itself.
//!
//! ```no_run
//! use std::{net::SocketAddr, time::Duration};
//! use axum::{routing::get, Router};
//! use fredkit_core::FailMode;
//! use fredkit_ratelimit::{Limit, Limiter};
//! use fredkit_ratelimit::tower::{ClientIp, RateLimitLayer};
//!
//! # async fn run(redis: fredkit_conn::Redis) -> Result<(), Box<dyn std::error::Error>> {
//! let limiter = Limiter::builder(&redis, "api:rl")
//!     .limit(Limit::gcra(100, Duration::from_secs(60)))
//!     .fail_mode(FailMode::Open)
//!     .build()?;
//! let app: Router = Router::new()
//!     .route("/", get(|| async { "hello" }))
//!     .layer(RateLimitLayer::new(limiter, ClientIp::new().trust_proxies(["10.0.0.0/8"])?));
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:3000").await?;
//! axum::serve(listener, app.into_make_service_with_connect_info::<SocketAddr>()).await?;
//! # Ok(()) }
//! ```
//!
//! # Headers
//!
//! - Always, on every response: `RateLimit-Policy` listing each limit as
//!   `"name";q=<limit>;w=<window seconds>` (IETF httpapi
//!   `draft-ietf-httpapi-ratelimit-headers`, structured fields).
//! - When Redis answered: `RateLimit` with each limit's
//!   `"name";r=<remaining>;t=<seconds until full again>` (`t` in
//!   delay-seconds, rounded up). Omitted on fail-mode decisions, whose
//!   counts are made up.
//! - On 429: `Retry-After: <seconds>` (rounded up, at least 1).
//! - With [`x_ratelimit_headers(true)`](RateLimitLayer::x_ratelimit_headers):
//!   `X-RateLimit-Limit`, `X-RateLimit-Remaining` and `X-RateLimit-Reset`
//!   (seconds until reset, rounded up) of the binding limit; on fail-mode
//!   decisions only `X-RateLimit-Limit`.
//! - [`draft_headers(false)`](RateLimitLayer::draft_headers) turns the two
//!   draft headers off.
//!
//! # Failure
//!
//! Redis being unavailable is handled by the limiter's fail mode: open lets
//! the request through, closed answers 429. Any other limiter error (a
//! script or protocol error) is logged and handled the same way, so the
//! layer never turns a Redis problem into a 500. A request the extractor
//! finds no key (or an empty one) for gets
//! [`missing_key_status`](RateLimitLayer::missing_key_status) (400 by
//! default); a request it answers [`RateKey::Skip`] for is not limited at
//! all (health checks, or a per-user limit that anonymous requests skip
//! while a per-IP layer still counts them).
//!
//! # Rejections
//!
//! The default rejection is `429 Too Many Requests` with the body
//! `Too Many Requests`; [`on_rejection`](RateLimitLayer::on_rejection)
//! replaces it with your own response (a JSON problem document, another
//! status). Either way the layer adds `Retry-After` and the rate-limit
//! headers to it.
//!
//! # Cancellation
//!
//! Dropping the response future while the check runs may or may not have
//! consumed the request's cost; the inner service is not called.

use std::{
    fmt,
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use http::{HeaderMap, HeaderName, HeaderValue, Request, Response, StatusCode};
use tower_layer::Layer;
use tower_service::Service;

use crate::limiter::{Limiter, Outcome};

pub use crate::client_ip::ClientIp;

/// What a [`KeyExtractor`] decides for a request.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum RateKey {
    /// Limit the request under this key (the identity). An empty key is
    /// treated as [`Missing`](Self::Missing).
    Limit(String),
    /// Do not limit this request: it goes to the inner service without a
    /// check (no round trip, no rate-limit headers).
    Skip,
    /// The request cannot be identified: the layer answers
    /// [`RateLimitLayer::missing_key_status`] without calling the inner
    /// service.
    Missing,
}

impl From<Option<String>> for RateKey {
    /// `Some(key)` limits under `key`, `None` is [`RateKey::Missing`].
    fn from(key: Option<String>) -> RateKey {
        match key {
            Some(k) => RateKey::Limit(k),
            None => RateKey::Missing,
        }
    }
}

impl From<String> for RateKey {
    fn from(key: String) -> RateKey {
        RateKey::Limit(key)
    }
}

/// Derives the rate-limit key (the identity) of a request.
///
/// `None` (or an empty key) means the request cannot be identified; the
/// layer answers it with [`RateLimitLayer::missing_key_status`] without
/// calling the inner service. An extractor that may also skip requests
/// overrides [`key`](Self::key) (as [`key_fn`] does for closures returning
/// a [`RateKey`]).
pub trait KeyExtractor<B>: Clone + Send + Sync + 'static {
    /// The key of `req`.
    fn extract(&self, req: &Request<B>) -> Option<String>;

    /// What the layer does with `req`: by default [`RateKey::Limit`] under
    /// [`extract`](Self::extract)'s key, or [`RateKey::Missing`].
    fn key(&self, req: &Request<B>) -> RateKey {
        self.extract(req).into()
    }
}

/// Identifies a request by a header's value (an API key, a tenant id).
/// Requests without the header, or with a non-UTF-8 or empty value, have no
/// key.
///
/// ```
/// use fredkit_ratelimit::tower::{HeaderKey, KeyExtractor};
///
/// let key = HeaderKey::new(http::HeaderName::from_static("x-api-key"));
/// let req = http::Request::builder().header("x-api-key", "k-123").body(()).unwrap();
/// assert_eq!(key.extract(&req).as_deref(), Some("k-123"));
/// ```
#[derive(Debug, Clone)]
pub struct HeaderKey {
    header: HeaderName,
}

impl HeaderKey {
    /// Keys requests by `header`.
    pub fn new(header: HeaderName) -> HeaderKey {
        HeaderKey { header }
    }
}

impl<B> KeyExtractor<B> for HeaderKey {
    fn extract(&self, req: &Request<B>) -> Option<String> {
        let v = req.headers().get(&self.header)?.to_str().ok()?.trim();
        (!v.is_empty()).then(|| v.to_string())
    }
}

/// A [`KeyExtractor`] made from a closure; see [`key_fn`].
#[derive(Clone)]
pub struct KeyFn<F>(F);

impl<F> fmt::Debug for KeyFn<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("KeyFn")
    }
}

/// Keys requests with a closure returning an `Option<String>` (`None`: the
/// request has no key) or a [`RateKey`] (which can also
/// [skip](RateKey::Skip) a request). For example, by the user id an
/// authentication layer put in the extensions, falling back to the IP, and
/// no limit at all for the health check — in an axum app:
///
/// ```no_run
/// use std::{net::SocketAddr, time::Duration};
/// use axum::{body::Body, routing::get, Router};
/// use fredkit_core::FailMode;
/// use fredkit_ratelimit::tower::{key_fn, ClientIp, KeyExtractor, RateKey, RateLimitLayer};
/// use fredkit_ratelimit::{Limit, Limiter};
///
/// #[derive(Clone)]
/// struct UserId(u64);
///
/// # async fn run(redis: fredkit_conn::Redis) -> Result<(), Box<dyn std::error::Error>> {
/// let limiter = Limiter::builder(&redis, "api:rl")
///     .limit(Limit::gcra(100, Duration::from_secs(60)))
///     .fail_mode(FailMode::Open)
///     .build()?;
/// let ip = ClientIp::new();
/// let key = key_fn(move |req: &http::Request<Body>| {
///     if req.uri().path() == "/health" {
///         return RateKey::Skip;
///     }
///     match req.extensions().get::<UserId>() {
///         Some(user) => RateKey::Limit(format!("user:{}", user.0)),
///         None => ip.extract(req).map(|ip| format!("ip:{ip}")).into(),
///     }
/// });
/// let app: Router = Router::new()
///     .route("/", get(|| async { "hello" }))
///     .route("/health", get(|| async { "ok" }))
///     .layer(RateLimitLayer::new(limiter, key));
/// let listener = tokio::net::TcpListener::bind("127.0.0.1:3000").await?;
/// axum::serve(listener, app.into_make_service_with_connect_info::<SocketAddr>()).await?;
/// # Ok(()) }
/// ```
pub fn key_fn<F>(f: F) -> KeyFn<F> {
    KeyFn(f)
}

impl<B, F, R> KeyExtractor<B> for KeyFn<F>
where
    F: Fn(&Request<B>) -> R + Clone + Send + Sync + 'static,
    R: Into<RateKey>,
{
    fn extract(&self, req: &Request<B>) -> Option<String> {
        match self.key(req) {
            RateKey::Limit(k) => Some(k),
            _ => None,
        }
    }

    fn key(&self, req: &Request<B>) -> RateKey {
        (self.0)(req).into()
    }
}

/// What a custom rejection ([`RateLimitLayer::on_rejection`]) is told
/// about the denied request.
#[derive(Debug)]
#[non_exhaustive]
pub struct Rejection<'a> {
    /// The request's rate-limit key.
    pub key: &'a str,
    /// How long until the same request would be allowed (at least 1 s when
    /// Redis gave no figure: a fail-closed decision).
    pub retry_after: Duration,
    /// The limiter's full answer: every limit's decision, and whether it
    /// is a fail-mode decision ([`Outcome::fallback`]).
    pub outcome: &'a Outcome,
}

/// Builds the response of a denied request.
type RejectFn = dyn Fn(&Rejection<'_>) -> Response<String> + Send + Sync;

#[derive(Clone)]
struct OnReject(Arc<RejectFn>);

impl fmt::Debug for OnReject {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("OnReject")
    }
}

#[derive(Debug, Clone)]
struct Options {
    draft: bool,
    x_headers: bool,
    cost: u32,
    missing_key: StatusCode,
    /// `RateLimit-Policy`, precomputed.
    policy: Option<HeaderValue>,
    /// A custom rejection; `None`: 429 "Too Many Requests".
    on_reject: Option<OnReject>,
}

/// Rate-limits the requests of the services it wraps; see the
/// [module docs](self).
///
/// Defaults: draft headers on, `X-RateLimit-*` off, cost 1 per request,
/// status 400 for requests without a key.
#[derive(Debug, Clone)]
#[must_use]
pub struct RateLimitLayer<K> {
    limiter: Limiter,
    extractor: K,
    options: Options,
}

impl<K> RateLimitLayer<K> {
    /// A layer checking `limiter` for the key `extractor` derives.
    pub fn new(limiter: Limiter, extractor: K) -> Self {
        let policy = policy_header(&limiter);
        RateLimitLayer {
            limiter,
            extractor,
            options: Options {
                draft: true,
                x_headers: false,
                cost: 1,
                missing_key: StatusCode::BAD_REQUEST,
                policy,
                on_reject: None,
            },
        }
    }

    /// Whether to send the IETF draft headers `RateLimit-Policy` and
    /// `RateLimit`. Default `true`.
    pub fn draft_headers(mut self, on: bool) -> Self {
        self.options.draft = on;
        self
    }

    /// Whether to send `X-RateLimit-Limit`, `X-RateLimit-Remaining` and
    /// `X-RateLimit-Reset` (seconds until reset). Default `false`.
    pub fn x_ratelimit_headers(mut self, on: bool) -> Self {
        self.options.x_headers = on;
        self
    }

    /// The cost of one request. Default 1; must not exceed the smallest
    /// limit (requests would get the limiter's `InvalidInput` error, handled
    /// like an unavailable Redis).
    pub fn cost(mut self, cost: u32) -> Self {
        self.options.cost = cost;
        self
    }

    /// The status for requests the extractor finds no key (or an empty
    /// one) for. Default
    /// `400 Bad Request`.
    pub fn missing_key_status(mut self, status: StatusCode) -> Self {
        self.options.missing_key = status;
        self
    }

    /// Answers denied requests with the response `reject` builds instead
    /// of the default `429 Too Many Requests`. The layer then adds
    /// `Retry-After` and the rate-limit headers to it (replacing headers of
    /// the same names). The status is yours to choose; keep 429 unless a
    /// client needs otherwise.
    ///
    /// ```
    /// use fredkit_ratelimit::tower::{ClientIp, RateLimitLayer};
    /// # fn run(limiter: fredkit_ratelimit::Limiter) {
    /// let layer = RateLimitLayer::new(limiter, ClientIp::new()).on_rejection(|r| {
    ///     http::Response::builder()
    ///         .status(http::StatusCode::TOO_MANY_REQUESTS)
    ///         .header("content-type", "application/problem+json")
    ///         .body(format!(
    ///             r#"{{"title":"slow down","retry_after_s":{}}}"#,
    ///             r.retry_after.as_secs().max(1)
    ///         ))
    ///         .unwrap_or_default()
    /// });
    /// # let _ = layer; }
    /// ```
    pub fn on_rejection<F>(mut self, reject: F) -> Self
    where
        F: Fn(&Rejection<'_>) -> Response<String> + Send + Sync + 'static,
    {
        self.options.on_reject = Some(OnReject(Arc::new(reject)));
        self
    }
}

impl<S, K: Clone> Layer<S> for RateLimitLayer<K> {
    type Service = RateLimitService<S, K>;

    fn layer(&self, inner: S) -> Self::Service {
        RateLimitService {
            inner,
            limiter: self.limiter.clone(),
            extractor: self.extractor.clone(),
            options: Arc::new(self.options.clone()),
        }
    }
}

/// The service [`RateLimitLayer`] produces.
#[derive(Debug, Clone)]
pub struct RateLimitService<S, K> {
    inner: S,
    limiter: Limiter,
    extractor: K,
    options: Arc<Options>,
}

impl<S, K, ReqBody, ResBody> Service<Request<ReqBody>> for RateLimitService<S, K>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    K: KeyExtractor<ReqBody>,
    ReqBody: Send + 'static,
    ResBody: From<&'static str> + From<String> + Send + 'static,
{
    type Response = Response<ResBody>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<ReqBody>) -> Self::Future {
        // The inner service polled ready is `self.inner`; keep it, leave a
        // fresh clone behind (the usual tower idiom).
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let limiter = self.limiter.clone();
        let options = Arc::clone(&self.options);
        // An empty key would be a limiter error, which the fail mode handles:
        // a fail-open limiter would let it through unlimited. It is no key.
        let key = match self.extractor.key(&req) {
            RateKey::Limit(k) if !k.is_empty() => Some(k),
            RateKey::Skip => return Box::pin(async move { inner.call(req).await }),
            _ => None,
        };
        Box::pin(async move {
            let Some(key) = key else {
                let mut res = Response::new(ResBody::from("request has no rate-limit key"));
                *res.status_mut() = options.missing_key;
                return Ok(res);
            };
            let outcome = match limiter.check_all(&key, options.cost).await {
                Ok(o) => o,
                Err(e) => {
                    tracing::error!(error = %e, "rate-limit check failed; using the limiter's fail mode");
                    limiter.fallback_outcome()
                }
            };
            if outcome.allowed() {
                let mut res = inner.call(req).await?;
                write_headers(res.headers_mut(), &limiter, &outcome, &options);
                Ok(res)
            } else {
                let retry = outcome
                    .decision()
                    .retry_after
                    .unwrap_or(Duration::from_secs(1));
                let mut res = match &options.on_reject {
                    Some(reject) => (reject.0)(&Rejection {
                        key: &key,
                        retry_after: retry,
                        outcome: &outcome,
                    })
                    .map(ResBody::from),
                    None => {
                        let mut res = Response::new(ResBody::from("Too Many Requests"));
                        *res.status_mut() = StatusCode::TOO_MANY_REQUESTS;
                        res
                    }
                };
                let headers = res.headers_mut();
                headers.insert(
                    http::header::RETRY_AFTER,
                    HeaderValue::from(ceil_secs(retry).max(1)),
                );
                write_headers(headers, &limiter, &outcome, &options);
                Ok(res)
            }
        })
    }
}

fn ceil_secs(d: Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}

/// `"name";q=100;w=60, ...`
fn policy_header(limiter: &Limiter) -> Option<HeaderValue> {
    let items: Vec<String> = limiter
        .limits()
        .iter()
        .map(|l| {
            format!(
                "\"{}\";q={};w={}",
                l.policy_name(),
                l.limit(),
                ceil_secs(l.window()).max(1)
            )
        })
        .collect();
    HeaderValue::from_str(&items.join(", ")).ok()
}

fn write_headers(headers: &mut HeaderMap, limiter: &Limiter, outcome: &Outcome, options: &Options) {
    if options.draft {
        if let Some(policy) = &options.policy {
            headers.insert(HeaderName::from_static("ratelimit-policy"), policy.clone());
        }
        if outcome.fallback().is_none() {
            let items: Vec<String> = limiter
                .limits()
                .iter()
                .zip(outcome.per_limit())
                .map(|(l, d)| {
                    format!(
                        "\"{}\";r={};t={}",
                        l.policy_name(),
                        d.remaining,
                        ceil_secs(d.reset_after)
                    )
                })
                .collect();
            if let Ok(v) = HeaderValue::from_str(&items.join(", ")) {
                headers.insert(HeaderName::from_static("ratelimit"), v);
            }
        }
    }
    if options.x_headers {
        let d = outcome.decision();
        headers.insert(
            HeaderName::from_static("x-ratelimit-limit"),
            HeaderValue::from(d.limit),
        );
        if outcome.fallback().is_some() {
            // Redis was not asked: no made-up counts.
            return;
        }
        headers.insert(
            HeaderName::from_static("x-ratelimit-remaining"),
            HeaderValue::from(d.remaining),
        );
        headers.insert(
            HeaderName::from_static("x-ratelimit-reset"),
            HeaderValue::from(ceil_secs(d.reset_after)),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seconds_round_up() {
        assert_eq!(ceil_secs(Duration::ZERO), 0);
        assert_eq!(ceil_secs(Duration::from_millis(1)), 1);
        assert_eq!(ceil_secs(Duration::from_secs(60)), 60);
        assert_eq!(ceil_secs(Duration::from_micros(60_000_001)), 61);
    }
}
