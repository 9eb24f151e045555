//! An axum service on fredkit: a cached product endpoint, a checkout under a
//! lock, a rate limit per client and JWT revocation, with the layers in the
//! order that makes revocation work.
//!
//! Authentication here is a stand-in (the `x-user` header names the subject
//! and `x-token` the token id); a real service validates a JWT and inserts the
//! same [`TokenClaims`] into the request's extensions.

use axum::extract::{Path, Request, State};
use axum::http::StatusCode;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use fredkit::cache::{Cache, CacheOptions};
use fredkit::core::traits::TokenClaims;
use fredkit::core::{FailMode, KeySpace};
use fredkit::lock::{LockManager, LockOptions};
use fredkit::ratelimit::tower::{HeaderKey, RateLimitLayer};
use fredkit::ratelimit::{Limit, Limiter};
use fredkit::revocation::{RevocationLayer, RevocationOptions, Revocations};
use fredkit::Redis;
use std::time::Duration;

pub use crate::quickstart::Product;

/// The service's shared state.
#[derive(Clone)]
pub struct App {
    products: Cache<Product>,
    locks: LockManager,
    checkout: LockOptions,
    /// The revocation store (also used by the revocation layer).
    pub revocations: Revocations,
}

/// Builds the router under `prefix`, and its state (to revoke tokens from a
/// test or an admin endpoint). `limit_per_hour` requests per client (the
/// `x-client` header) are let through at once, the rest get 429.
///
/// # Errors
/// A bad prefix or option, or Redis unreachable while the cache and the
/// revocation store start.
pub async fn router(
    redis: &Redis,
    prefix: &str,
    limit_per_hour: u64,
) -> anyhow::Result<(Router, App)> {
    let ks = KeySpace::new(prefix)?;
    let app = App {
        products: Cache::new(
            redis,
            CacheOptions::builder(ks.child("product")?.prefix())
                .ttl(Duration::from_secs(60))
                .build()?,
        )
        .await?,
        locks: LockManager::new(redis, ks.child("locks")?.prefix())?,
        checkout: LockOptions::builder()
            .ttl(Duration::from_secs(10))
            .wait(Duration::from_secs(2))
            .build()?,
        revocations: Revocations::new(
            redis,
            RevocationOptions::builder(FailMode::Closed)
                .prefix(ks.child("revoked")?.prefix())
                .build()?,
        )
        .await?,
    };
    let limiter = Limiter::builder(redis, ks.child("rl")?.prefix())
        .limit(Limit::gcra(limit_per_hour, Duration::from_secs(3600)))
        .fail_mode(FailMode::Open)
        .build()?;

    let revocation =
        RevocationLayer::new(app.revocations.clone(), |parts: &http::request::Parts| {
            parts.extensions.get::<TokenClaims>().cloned()
        });
    let rate_limit = RateLimitLayer::new(
        limiter,
        HeaderKey::new(http::HeaderName::from_static("x-client")),
    );

    // axum runs the LAST layer FIRST: rate limit, then authentication, then
    // revocation (which needs the claims authentication inserted).
    let router = Router::new()
        .route("/products/{id}", get(product))
        .route("/checkout/{order}", post(checkout))
        .with_state(app.clone())
        .layer(revocation)
        .layer(middleware::from_fn(authenticate))
        .layer(rate_limit);
    Ok((router, app))
}

/// The stand-in for JWT validation: `x-user` and `x-token` become the claims.
async fn authenticate(mut req: Request, next: Next) -> Response {
    let (Some(sub), Some(jti)) = (header(&req, "x-user"), header(&req, "x-token")) else {
        return StatusCode::UNAUTHORIZED.into_response();
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    req.extensions_mut().insert(TokenClaims {
        jti,
        sub,
        org: None,
        iat: now.saturating_sub(1),
        exp: now.saturating_add(3600),
    });
    next.run(req).await
}

fn header(req: &Request, name: &str) -> Option<String> {
    req.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

async fn product(State(app): State<App>, Path(id): Path<String>) -> Response {
    let name = format!("product {id}");
    let loaded = app
        .products
        .get_or_set(&id, move || async move { Product { name, cents: 450 } })
        .await;
    match loaded {
        Ok(p) => Json(p).into_response(),
        Err(e) => (StatusCode::SERVICE_UNAVAILABLE, e.to_string()).into_response(),
    }
}

async fn checkout(State(app): State<App>, Path(order): Path<u64>) -> Response {
    let resource = format!("checkout:{order}");
    match app.locks.acquire(&resource, &app.checkout).await {
        Ok(Some(guard)) => {
            let token = guard.fencing_token();
            // ... charge, then write the order with `token` so that a stalled
            // holder's late write is refused (fredkit::lock::FencedStore).
            let _ = guard.release().await;
            (StatusCode::OK, token.to_string()).into_response()
        }
        Ok(None) => (StatusCode::CONFLICT, "checkout in progress").into_response(),
        Err(e) => (StatusCode::SERVICE_UNAVAILABLE, e.to_string()).into_response(),
    }
}
