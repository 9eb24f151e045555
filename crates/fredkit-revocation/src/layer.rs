//! A tower layer that refuses revoked tokens (feature `tower`):
//! [`RevocationLayer`] and its [`RevocationService`].

use std::fmt;
use std::future::Future;
use std::pin::Pin;
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
/// | `None` (no token) | — | the inner service decides (the request passes) |
/// | `Some(claims)` | not revoked | the inner service's response |
/// | `Some(claims)` | revoked | 401, `WWW-Authenticate: Bearer error="invalid_token"` |
/// | `Some(claims)` | Redis unavailable, [`FailMode::Closed`](fredkit_core::FailMode::Closed) | 503 (the token is not known to be revoked: clients should retry, not discard it) — when the layer was built with [`new`](Self::new) from a [`Revocations`](crate::Revocations); with [`from_arc`](Self::from_arc) (any [`RevocationStore`], which answers only a `bool`) 401 |
/// | `Some(claims)` | Redis unavailable, [`FailMode::Open`](fredkit_core::FailMode::Open) | the inner service's response |
/// | `Some(claims)` | an `InvalidInput` error (token outlives `max_token_lifetime`, or its `jti` or `sub` is empty, or its `org` is `Some("")`) | 401 |
/// | `Some(claims)` | any other error the fail mode does not cover | 503 |
///
/// Cost per request: one [`check`](RevocationStore::check) — one round trip,
/// or none with the local cache.
///
/// ```no_run
/// use axum::{routing::get, Router};
/// use fredkit_revocation::{FailMode, RevocationLayer, RevocationOptions, Revocations, TokenClaims};
///
/// # async fn run(redis: fredkit_conn::Redis) -> fredkit_core::Result<()> {
/// let store = Revocations::new(&redis, RevocationOptions::builder(FailMode::Closed).build()?).await?;
/// let app: Router = Router::new()
///     .route("/me", get(|| async { "hello" }))
///     // Runs after your JWT validation layer, which put the verified claims
///     // into the request extensions.
///     .layer(RevocationLayer::new(store, |parts: &http::request::Parts| {
///         parts.extensions.get::<TokenClaims>().cloned()
///     }));
/// # let _ = app; Ok(()) }
/// ```
pub struct RevocationLayer {
    store: Arc<dyn RevocationStore>,
    /// The same store when it is a [`Revocations`](crate::Revocations): its
    /// [`check_verdict`](crate::Revocations::check_verdict) tells a
    /// fail-closed outage (503) from a revoked token (401).
    verdicts: Option<crate::Revocations>,
    extract: Arc<Extractor>,
}

impl Clone for RevocationLayer {
    fn clone(&self) -> Self {
        RevocationLayer {
            store: Arc::clone(&self.store),
            verdicts: self.verdicts.clone(),
            extract: Arc::clone(&self.extract),
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
        }
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
        Box::pin(async move {
            let Some(claims) = claims else {
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
