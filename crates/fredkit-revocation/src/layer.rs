//! A tower layer that refuses revoked tokens (feature `tower`):
//! [`RevocationLayer`] and its [`RevocationService`].

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use fredkit_core::traits::{RevocationStore, TokenClaims};
use fredkit_core::ErrorKind;

use crate::Verdict;
use http::{header, HeaderValue, Request, Response, StatusCode};
use tower_layer::Layer;
use tower_service::Service;

/// The claims extractor a [`RevocationLayer`] calls on every request.
type Extractor = dyn Fn(&http::request::Parts) -> Option<TokenClaims> + Send + Sync;

/// A tower [`Layer`] that asks a [`RevocationStore`] about every request's
/// token and answers **401 Unauthorized** for a revoked one, without calling
/// the inner service.
///
/// **It does not validate tokens.** Verifying the signature, `exp`, `nbf`,
/// audience and issuer stays your job — your JWT library, in a layer that
/// runs *before* this one and typically stores the validated claims in the
/// request extensions. The extractor closure you give this layer only turns
/// those already-validated claims into a [`TokenClaims`]; never build them
/// from an unverified token.
///
/// | extractor returns | the store says | response |
/// |---|---|---|
/// | `None` (no claims) | — | 401, `WWW-Authenticate: Bearer` (default); with [`allow_requests_without_claims(true)`](Self::allow_requests_without_claims) the inner service decides (the request passes; a warning is logged once per layer) |
/// | `Some(claims)` | not revoked | the inner service's response |
/// | `Some(claims)` | revoked | 401, `WWW-Authenticate: Bearer error="invalid_token"` |
/// | `Some(claims)` | Redis unavailable, [`FailMode::Closed`](fredkit_core::FailMode::Closed) | 503 (the token is not known to be revoked: clients should retry, not discard it) — when the layer was built with [`new`](Self::new) from a [`Revocations`](crate::Revocations); with [`from_arc`](Self::from_arc) (any [`RevocationStore`], which answers only a `bool`) 401 |
/// | `Some(claims)` | Redis unavailable, [`FailMode::Open`](fredkit_core::FailMode::Open) | the inner service's response |
/// | `Some(claims)` | an `InvalidInput` error (token outlives `max_token_lifetime`, or its `jti` or `sub` is empty, or its `org` is `Some("")`) | 401 |
/// | `Some(claims)` | any other error the fail mode does not cover | 503 |
///
/// Cost per request: one [`check`](RevocationStore::check) — one round trip,
/// or none with the local cache. A request without claims costs none.
///
/// # Layer order
///
/// The claims must be in the request **before** this layer sees it: the
/// layer that validates the JWT and inserts the claims runs first. In
/// axum, the **last** `.layer()` call is the **outermost** layer and runs
/// **first**, so `.layer(RevocationLayer)` comes *before*
/// `.layer(your_auth_layer)` in the code (with `tower::ServiceBuilder` it is
/// the other way round: the first `.layer()` runs first). Misordered, this
/// layer sees no claims: it then answers 401 to every request (the safe
/// failure, visible at once), never lets a revoked token through.
///
/// Routes that are public (health checks, login) belong outside the layer
/// (a separate router merged in), or, if the layer must wrap them, use
/// [`allow_requests_without_claims(true)`](Self::allow_requests_without_claims)
/// and let the auth layer refuse anonymous requests where it must.
///
/// ```no_run
/// use axum::{extract::Request, middleware::{self, Next}, response::Response, routing::get, Router};
/// use fredkit_revocation::{FailMode, RevocationLayer, RevocationOptions, Revocations, TokenClaims};
///
/// // Your JWT validation: verifies the token, then stores its claims.
/// async fn authenticate(mut req: Request, next: Next) -> Response {
///     # let verified: Option<TokenClaims> = None;
///     if let Some(claims) = verified {
///         req.extensions_mut().insert(claims);
///     }
///     next.run(req).await
/// }
///
/// # async fn run(redis: fredkit_conn::Redis) -> fredkit_core::Result<()> {
/// let store = Revocations::new(&redis, RevocationOptions::builder(FailMode::Closed).build()?).await?;
/// let app: Router = Router::new()
///     .route("/me", get(|| async { "hello" }))
///     // Inner: runs second, reads the claims `authenticate` inserted.
///     .layer(RevocationLayer::new(store, |parts: &http::request::Parts| {
///         parts.extensions.get::<TokenClaims>().cloned()
///     }))
///     // Outer (last call): runs first.
///     .layer(middleware::from_fn(authenticate));
/// # let _ = app; Ok(()) }
/// ```
pub struct RevocationLayer {
    store: Arc<dyn RevocationStore>,
    /// The same store when it is a [`Revocations`](crate::Revocations): its
    /// [`check_verdict`](crate::Revocations::check_verdict) tells a
    /// fail-closed outage (503) from a revoked token (401).
    verdicts: Option<crate::Revocations>,
    extract: Arc<Extractor>,
    /// Whether a request without claims goes on to the inner service.
    allow_missing: bool,
    /// Set once the first request without claims was let through and the
    /// warning logged (shared by the layer's clones and services).
    warned: Arc<AtomicBool>,
}

impl Clone for RevocationLayer {
    fn clone(&self) -> Self {
        RevocationLayer {
            store: Arc::clone(&self.store),
            verdicts: self.verdicts.clone(),
            extract: Arc::clone(&self.extract),
            allow_missing: self.allow_missing,
            warned: Arc::clone(&self.warned),
        }
    }
}

impl fmt::Debug for RevocationLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RevocationLayer").finish_non_exhaustive()
    }
}

impl RevocationLayer {
    /// A layer checking tokens against `store`, with `extract` turning a
    /// request's (validated) claims into [`TokenClaims`]. When `store` is a
    /// [`Revocations`](crate::Revocations), a fail-closed outage answers 503
    /// rather than 401 (see the table above).
    pub fn new<S, F>(store: S, extract: F) -> RevocationLayer
    where
        S: RevocationStore + 'static,
        F: Fn(&http::request::Parts) -> Option<TokenClaims> + Send + Sync + 'static,
    {
        let verdicts = (&store as &dyn std::any::Any)
            .downcast_ref::<crate::Revocations>()
            .cloned();
        let mut layer = Self::from_arc(Arc::new(store), extract);
        layer.verdicts = verdicts;
        layer
    }

    /// [`new`](Self::new) with a shared store (any implementation). The
    /// trait answers only "refuse or not", so a fail-closed outage is
    /// answered 401 like a revoked token.
    pub fn from_arc<F>(store: Arc<dyn RevocationStore>, extract: F) -> RevocationLayer
    where
        F: Fn(&http::request::Parts) -> Option<TokenClaims> + Send + Sync + 'static,
    {
        RevocationLayer {
            store,
            verdicts: None,
            extract: Arc::new(extract),
            allow_missing: false,
            warned: Arc::new(AtomicBool::new(false)),
        }
    }

    /// Whether a request the extractor finds no claims in goes on to the
    /// inner service (`true`) or is answered 401 with
    /// `WWW-Authenticate: Bearer` (`false`, the default).
    ///
    /// The default is the safe one: a request reaches this layer without
    /// claims either because it carries no token, or because the layers are
    /// in the wrong order (see [Layer order](Self#layer-order)) — and then a
    /// revoked token would pass unchecked. Turn it on only when anonymous
    /// requests must reach the inner service and something else refuses
    /// them where needed. When on, the first request let through without
    /// claims logs one warning (per layer and its clones), so a misordered
    /// stack still shows in the logs.
    #[must_use]
    pub fn allow_requests_without_claims(mut self, allow: bool) -> RevocationLayer {
        self.allow_missing = allow;
        self
    }
}

impl<S> Layer<S> for RevocationLayer {
    type Service = RevocationService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RevocationService {
            inner,
            layer: self.clone(),
        }
    }
}

/// The service a [`RevocationLayer`] wraps around the inner one.
#[derive(Clone)]
pub struct RevocationService<S> {
    inner: S,
    layer: RevocationLayer,
}

impl<S: fmt::Debug> fmt::Debug for RevocationService<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RevocationService")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

fn refuse<B: Default>(status: StatusCode, description: &'static str) -> Response<B> {
    let mut response = Response::new(B::default());
    *response.status_mut() = status;
    if status == StatusCode::UNAUTHORIZED {
        let value = match description {
            // RFC 6750 3.1: no error code when the request has no token.
            "missing" => "Bearer",
            "revoked" => {
                r#"Bearer error="invalid_token", error_description="the token has been revoked""#
            }
            _ => r#"Bearer error="invalid_token", error_description="the token cannot be checked""#,
        };
        response
            .headers_mut()
            .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static(value));
    }
    response
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for RevocationService<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    ReqBody: Send + 'static,
    ResBody: Default + Send + 'static,
{
    type Response = Response<ResBody>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<ReqBody>) -> Self::Future {
        let (parts, body) = request.into_parts();
        let claims = (self.layer.extract)(&parts);
        let request = Request::from_parts(parts, body);
        // The clone is not ready; keep the ready one for this call.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let store = Arc::clone(&self.layer.store);
        let verdicts = self.layer.verdicts.clone();
        let allow_missing = self.layer.allow_missing;
        let warned = Arc::clone(&self.layer.warned);
        Box::pin(async move {
            let Some(claims) = claims else {
                if !allow_missing {
                    return Ok(refuse(StatusCode::UNAUTHORIZED, "missing"));
                }
                if !warned.swap(true, Ordering::Relaxed) {
                    tracing::warn!(
                        "fredkit-revocation: a request without claims passed the revocation layer \
                         (allow_requests_without_claims is on); if requests with tokens also arrive \
                         without claims, the layers are misordered and revoked tokens pass: the layer \
                         inserting the claims must run first (in axum: the later .layer() call). \
                         Logged once."
                    );
                }
                return inner.call(request).await;
            };
            let verdict = match &verdicts {
                Some(revocations) => revocations.check_verdict(&claims).await,
                None => store.check(&claims).await.map(|refuse| {
                    if refuse {
                        Verdict::Revoked
                    } else {
                        Verdict::NotRevoked
                    }
                }),
            };
            match verdict {
                Ok(Verdict::FailClosed) => {
                    Ok(refuse(StatusCode::SERVICE_UNAVAILABLE, "unavailable"))
                }
                Ok(v) if !v.refuse() => inner.call(request).await,
                Ok(_) => Ok(refuse(StatusCode::UNAUTHORIZED, "revoked")),
                Err(e) if e.kind() == ErrorKind::InvalidInput => {
                    tracing::warn!(error = %e, "fredkit-revocation: token cannot be checked; refusing it");
                    Ok(refuse(StatusCode::UNAUTHORIZED, "unchecked"))
                }
                Err(e) => {
                    tracing::error!(error = %e, "fredkit-revocation: revocation check failed");
                    Ok(refuse(StatusCode::SERVICE_UNAVAILABLE, "error"))
                }
            }
        })
    }
}
