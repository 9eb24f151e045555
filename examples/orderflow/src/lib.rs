//! # OrderFlow
//!
//! The seed's hands-on service ("OrderFlow Redis Integration"), built on
//! fredkit, with every task's invariant tested over real HTTP
//! (`tests/orderflow.rs`, standalone and cluster):
//!
//! 1. **Product cache** — `GET /products/{id}` through `fredkit::cache`:
//!    cache-aside with stampede protection (200 concurrent cold reads → one
//!    database load), negative caching of unknown ids, invalidation on
//!    `PUT /products/{id}` on every instance.
//! 2. **Cart** — `fredkit::collections::TtlMap`: atomic add/remove with a
//!    sliding TTL; an anonymous cart (`/anon/{id}/cart/items`) is merged
//!    into the user's at `POST /login` (crash-safe, never doubled).
//! 3. **Rate limiting** — per user, sliding window (`fredkit::ratelimit`,
//!    exact sliding log) on every authenticated route, with
//!    `X-RateLimit-Limit` / `-Remaining` / `-Reset` and 429.
//! 4. **Checkout lock** — `POST /checkout` takes every product's lock
//!    (`fredkit::lock`, `acquire_all` in a fixed order, fencing tokens kept
//!    on the order) around a read-modify-write of the stock: two concurrent
//!    checkouts of the last item place one order.
//!    Each order's confirmation e-mail is a `fredkit::jobs` job (idempotent
//!    by the order id), run by a worker in every instance.
//! 5. **Metrics** — `GET /metrics` (Prometheus text from
//!    `metrics-exporter-prometheus`: fredkit's counters and latency
//!    histograms plus `orderflow_*`), `GET /health`.
//!
//! Login issues an HS256 JWT (the `jsonwebtoken` crate); `POST /logout`
//! revokes it with `fredkit::revocation`, whose layer answers 401 for it on
//! every instance. Bad input at the edge (malformed JSON, unknown product,
//! a quantity outside 1..=1000, an oversized body) is a 4xx with a JSON
//! `{"error": ...}` body, never a 500 or a panic.

mod db;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::extract::rejection::JsonRejection;
use axum::extract::{DefaultBodyLimit, FromRequest, Path, Request, State};
use axum::http::StatusCode;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Extension, Router};
use fredkit::cache::{Cache, CacheOptions};
use fredkit::collections::{MergeOutcome, TtlMap};
use fredkit::core::traits::TokenClaims;
use fredkit::core::{FailMode, KeySpace};
use fredkit::jobs::{Job, JobOptions, Queue, Worker, WorkerConfig};
use fredkit::lock::{LockManager, LockOptions};
use fredkit::ratelimit::tower::{key_fn, RateKey, RateLimitLayer};
use fredkit::ratelimit::{Limit, Limiter};
use fredkit::revocation::{RevocationLayer, RevocationOptions, Revocations};
use fredkit::Redis;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use metrics_exporter_prometheus::PrometheusHandle;
use serde::{Deserialize, Serialize};
use serde_json::json;

pub use db::{Database, Order, Product};

/// The largest request body accepted (413 beyond).
pub const MAX_BODY_BYTES: usize = 16 * 1024;

/// How OrderFlow is set up.
#[derive(Clone)]
pub struct Config {
    /// Every Redis key of this instance starts with it (instances of one
    /// deployment share it).
    pub prefix: String,
    /// Requests per user per minute on the authenticated routes.
    pub requests_per_minute: u64,
    /// How long each database call takes.
    pub db_latency: Duration,
    /// Products 1..=N in the database.
    pub products: u64,
    /// Initial stock of each product.
    pub stock: u64,
    /// A cart's idle lifetime (every write resets it).
    pub cart_ttl: Duration,
    /// How long a product stays cached.
    pub product_ttl: Duration,
    /// The HS256 key that signs login tokens.
    pub jwt_secret: Vec<u8>,
    /// A login token's lifetime.
    pub token_ttl: Duration,
    /// The Prometheus recorder's handle, rendered by `GET /metrics` (`None`:
    /// 404 there).
    pub metrics: Option<PrometheusHandle>,
    /// The dashboard's memory alert line: this share of Redis's
    /// `maxmemory` (no line when `maxmemory` is 0, i.e. unlimited).
    pub memory_alert_share: f64,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            prefix: "orderflow".into(),
            requests_per_minute: 600,
            db_latency: Duration::from_millis(50),
            products: 10,
            stock: 100,
            cart_ttl: Duration::from_secs(7 * 24 * 3600),
            product_ttl: Duration::from_secs(300),
            jwt_secret: b"orderflow-demo-secret-change-me".to_vec(),
            token_ttl: Duration::from_secs(3600),
            metrics: None,
            memory_alert_share: 0.8,
        }
    }
}

/// One OrderFlow instance: its state (for tests and admin tools) and, from
/// [`OrderFlow::router`], its HTTP routes.
#[derive(Clone)]
pub struct OrderFlow {
    /// The database (shared by every instance built with [`OrderFlow::with_database`]).
    pub db: Arc<Database>,
    redis: Redis,
    products: Cache<Option<Product>>,
    carts: TtlMap<String>,
    locks: LockManager,
    checkout_lock: LockOptions,
    /// The revocation store behind logout.
    pub revocations: Revocations,
    limiter: Limiter,
    emails: Queue<OrderEmail>,
    /// This instance's e-mail worker (stops when the last clone is dropped).
    email_worker: Arc<Worker<OrderEmail>>,
    config: Arc<Config>,
}

/// The job enqueued for each order: its confirmation e-mail.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct OrderEmail {
    /// The order.
    pub order: u64,
    /// Its buyer.
    pub user: String,
}

impl OrderFlow {
    /// An instance with its own seeded database.
    ///
    /// # Errors
    /// A bad prefix or option; Redis unreachable while the cache and the
    /// revocation store start.
    pub async fn new(redis: &Redis, config: Config) -> anyhow::Result<OrderFlow> {
        let db = Arc::new(Database::seeded(
            config.products,
            config.stock,
            config.db_latency,
        ));
        OrderFlow::with_database(redis, config, db).await
    }

    /// An instance on `db` (several instances of one service share it).
    ///
    /// # Errors
    /// As [`new`](Self::new).
    pub async fn with_database(
        redis: &Redis,
        config: Config,
        db: Arc<Database>,
    ) -> anyhow::Result<OrderFlow> {
        let ks = KeySpace::new(config.prefix.as_str())?;
        let products = Cache::new(
            redis,
            CacheOptions::builder(ks.child("product")?)
                .ttl(config.product_ttl)
                .build()?,
        )
        .await?;
        let carts = TtlMap::new(redis, ks.child("cart")?, config.cart_ttl)?;
        let locks = LockManager::new(redis, ks.child("locks")?)?;
        let checkout_lock = LockOptions::builder()
            .ttl(Duration::from_secs(10))
            .watchdog(true)
            .wait(Duration::from_secs(10))
            .build()?;
        let revocations = Revocations::new(
            redis,
            RevocationOptions::builder(FailMode::Closed)
                .prefix(ks.child("revoked")?)
                .max_token_lifetime(config.token_ttl)
                .build()?,
        )
        .await?;
        let limiter = Limiter::builder(redis, ks.child("rl")?)
            .limit(
                Limit::sliding_log(config.requests_per_minute, Duration::from_secs(60))
                    .name("user"),
            )
            .fail_mode(FailMode::Open)
            .build()?;
        let emails: Queue<OrderEmail> = Queue::new(redis, ks.child("jobs")?, "order-emails")?;
        let mailer = db.clone();
        let email_worker = Worker::start(
            &emails,
            WorkerConfig::new().concurrency(4),
            move |job: Job<OrderEmail>| {
                let db = mailer.clone();
                async move {
                    // Sending is idempotent by order id: a job run twice
                    // (at least once) sends one e-mail.
                    let sent_now = db.send_email(job.payload.order);
                    tracing::info!(order = job.payload.order, user = %job.payload.user, sent_now, "orderflow: order e-mail");
                    Ok::<_, std::convert::Infallible>(sent_now)
                }
            },
        )?;
        Ok(OrderFlow {
            emails,
            email_worker: Arc::new(email_worker),
            db,
            redis: redis.clone(),
            products,
            carts,
            locks,
            checkout_lock,
            revocations,
            limiter,
            config: Arc::new(config),
        })
    }

    /// Stops this instance's e-mail worker, finishing e-mails in flight.
    pub async fn shutdown(&self) {
        let _ = self.email_worker.shutdown().await;
    }

    /// The HTTP routes.
    pub fn router(&self) -> Router {
        let revocation =
            RevocationLayer::new(self.revocations.clone(), |parts: &http::request::Parts| {
                parts.extensions.get::<TokenClaims>().cloned()
            });
        let per_user = RateLimitLayer::new(
            self.limiter.clone(),
            key_fn(|req: &http::Request<axum::body::Body>| {
                match req.extensions().get::<TokenClaims>() {
                    Some(c) => RateKey::Limit(format!("user:{}", c.sub)),
                    None => RateKey::Missing,
                }
            }),
        )
        .x_ratelimit_headers(true)
        .on_rejection(|r| {
            let mut response = http::Response::new(
                json!({
                    "error": "rate limit exceeded",
                    "retry_after_s": r.retry_after.as_secs().max(1),
                })
                .to_string(),
            );
            *response.status_mut() = StatusCode::TOO_MANY_REQUESTS;
            response.headers_mut().insert(
                http::header::CONTENT_TYPE,
                http::HeaderValue::from_static("application/json"),
            );
            response
        });
        // axum runs the last layer first: authenticate (claims), then
        // revocation (needs the claims), then the per-user limit.
        let authenticated = Router::new()
            .route("/cart", get(cart))
            .route("/cart/items", post(add_item))
            .route("/cart/items/{product}", delete(remove_item))
            .route("/checkout", post(checkout))
            .route("/logout", post(logout))
            .layer(per_user)
            .layer(revocation)
            .layer(middleware::from_fn_with_state(self.clone(), authenticate));
        Router::new()
            .route("/health", get(health))
            .route("/metrics", get(metrics_text))
            .route("/dashboard", get(dashboard))
            .route("/dashboard/redis", get(redis_memory))
            .route("/products/{id}", get(product).put(update_product))
            .route("/anon/{anon}/cart/items", post(add_anon_item))
            .route("/login", post(login))
            .merge(authenticated)
            .fallback(|| async { json_error(StatusCode::NOT_FOUND, "no such route") })
            .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
            .with_state(self.clone())
    }

    fn cart_of_user(sub: &str) -> String {
        format!("user:{sub}")
    }
}

/// A 4xx answer: a status and what was wrong.
struct ApiError(StatusCode, String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        json_error(self.0, self.1)
    }
}

/// A JSON error body with `status`.
fn json_error(status: StatusCode, message: impl Into<String>) -> Response {
    (status, axum::Json(json!({ "error": message.into() }))).into_response()
}

/// Redis (or a fredkit primitive) failed: 503, saying so.
fn unavailable(e: impl std::fmt::Display) -> Response {
    tracing::warn!(error = %e, "orderflow: Redis unavailable");
    json_error(
        StatusCode::SERVICE_UNAVAILABLE,
        "a backing service is unavailable; retry shortly",
    )
}

/// `Json<T>` whose rejections are JSON errors with the rejection's status
/// (400 malformed, 415 wrong content type, 413 too large, 422 wrong shape).
struct JsonBody<T>(T);

impl<S, T> FromRequest<S> for JsonBody<T>
where
    axum::Json<T>: FromRequest<S, Rejection = JsonRejection>,
    S: Send + Sync,
{
    type Rejection = Response;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        match axum::Json::<T>::from_request(req, state).await {
            Ok(axum::Json(v)) => Ok(JsonBody(v)),
            Err(rejection) => Err(json_error(rejection.status(), rejection.body_text())),
        }
    }
}

fn parse_id(raw: &str) -> Result<u64, ApiError> {
    raw.parse::<u64>().map_err(|_| {
        ApiError(
            StatusCode::BAD_REQUEST,
            format!("product id must be a positive integer, got {raw:?}"),
        )
    })
}

async fn health(State(app): State<OrderFlow>) -> Response {
    let h = app.redis.health().await;
    let body = json!({
        "redis": if h.reachable { "up" } else { "down" },
        "latency_ms": h.latency.map(|d| d.as_secs_f64() * 1000.0),
    });
    let status = if h.reachable {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, axum::Json(body)).into_response()
}

async fn metrics_text(State(app): State<OrderFlow>) -> Response {
    match &app.config.metrics {
        Some(handle) => (
            [(http::header::CONTENT_TYPE, "text/plain; version=0.0.4")],
            handle.render(),
        )
            .into_response(),
        None => json_error(StatusCode::NOT_FOUND, "metrics are not enabled"),
    }
}

/// The dashboard: one HTML page, no build step, that scrapes `/metrics`
/// and `/dashboard/redis` every second and draws SVG charts.
async fn dashboard() -> Response {
    axum::response::Html(include_str!("dashboard.html")).into_response()
}

/// Redis memory for the dashboard: `used_memory`, `maxmemory` and the
/// alert line (`memory_alert_share` of `maxmemory`, `null` when unlimited).
/// On a cluster, the node fred picks for `INFO`.
async fn redis_memory(State(app): State<OrderFlow>) -> Response {
    use fredkit::conn::fred::prelude::ClientLike;
    let info: Result<String, _> = app
        .redis
        .client()
        .info(Some(fredkit::conn::fred::types::InfoKind::Memory))
        .await;
    let Ok(info) = info else {
        return json_error(StatusCode::SERVICE_UNAVAILABLE, "INFO memory failed");
    };
    let field = |name: &str| -> Option<u64> {
        info.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
            .and_then(|v| v.trim().parse().ok())
    };
    let used = field("used_memory");
    let max = field("maxmemory").filter(|m| *m > 0);
    let alert_at = max.map(|m| (m as f64 * app.config.memory_alert_share) as u64);
    axum::Json(json!({ "used_memory": used, "maxmemory": max, "alert_at": alert_at }))
        .into_response()
}

async fn product(State(app): State<OrderFlow>, Path(raw): Path<String>) -> Response {
    let id = match parse_id(&raw) {
        Ok(id) => id,
        Err(r) => return r.into_response(),
    };
    let db = app.db.clone();
    let loaded = app
        .products
        .get_or_try_set(&id.to_string(), move || async move {
            Ok::<_, std::convert::Infallible>(db.load_product(id).await)
        })
        .await;
    match loaded {
        Ok(Some(p)) => axum::Json(p).into_response(),
        Ok(None) => json_error(StatusCode::NOT_FOUND, format!("no product {id}")),
        Err(e) => unavailable(e),
    }
}

/// `PUT /products/{id}` body.
#[derive(Debug, Deserialize)]
pub struct PriceUpdate {
    /// The new price in cents.
    pub cents: u64,
}

async fn update_product(
    State(app): State<OrderFlow>,
    Path(raw): Path<String>,
    JsonBody(update): JsonBody<PriceUpdate>,
) -> Response {
    let id = match parse_id(&raw) {
        Ok(id) => id,
        Err(r) => return r.into_response(),
    };
    let Some(p) = app.db.set_price(id, update.cents).await else {
        return json_error(StatusCode::NOT_FOUND, format!("no product {id}"));
    };
    // Database first, then the cache entry (and every instance's L1).
    if let Err(e) = app.products.remove(&id.to_string()).await {
        return unavailable(e);
    }
    axum::Json(p).into_response()
}

/// `POST /login` body.
#[derive(Debug, Deserialize)]
pub struct Login {
    /// The user (this demo trusts it: a real service checks a password).
    pub user: String,
    /// An anonymous cart to merge into the user's.
    #[serde(default)]
    pub anon_cart: Option<String>,
}

/// The token's claims.
#[derive(Debug, Serialize, Deserialize)]
struct Claims {
    sub: String,
    jti: String,
    iat: u64,
    exp: u64,
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn valid_name(what: &str, s: &str) -> Result<(), ApiError> {
    let ok = !s.is_empty()
        && s.len() <= 64
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.@".contains(c));
    if ok {
        Ok(())
    } else {
        Err(ApiError(
            StatusCode::UNPROCESSABLE_ENTITY,
            format!("{what} must be 1-64 characters of A-Z a-z 0-9 - _ . @"),
        ))
    }
}

async fn login(State(app): State<OrderFlow>, JsonBody(login): JsonBody<Login>) -> Response {
    if let Err(r) = valid_name("user", &login.user) {
        return r.into_response();
    }
    let iat = now_secs();
    let claims = Claims {
        sub: login.user.clone(),
        jti: format!("{:032x}", rand::random::<u128>()),
        iat,
        exp: iat.saturating_add(app.config.token_ttl.as_secs()),
    };
    let token = match jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(&app.config.jwt_secret),
    ) {
        Ok(t) => t,
        Err(e) => {
            tracing::error!(error = %e, "orderflow: could not sign a token");
            return json_error(StatusCode::INTERNAL_SERVER_ERROR, "could not sign a token");
        }
    };
    let mut merged = 0;
    if let Some(anon) = &login.anon_cart {
        if let Err(r) = valid_name("anon_cart", anon) {
            return r.into_response();
        }
        match app
            .carts
            .merge_into(
                &format!("anon:{anon}"),
                &OrderFlow::cart_of_user(&login.user),
            )
            .await
        {
            Ok(MergeOutcome::Merged { entries, .. }) => merged = entries,
            Ok(_) => {}
            Err(e) => return unavailable(e),
        }
    }
    axum::Json(json!({ "token": token, "merged_entries": merged })).into_response()
}

/// Validates the bearer token and puts its claims in the request.
async fn authenticate(State(app): State<OrderFlow>, mut req: Request, next: Next) -> Response {
    let Some(token) = req
        .headers()
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
    else {
        return json_error(
            StatusCode::UNAUTHORIZED,
            "sign in: Authorization: Bearer <token>",
        );
    };
    let mut validation = Validation::new(Algorithm::HS256);
    validation.leeway = 0;
    let decoded = jsonwebtoken::decode::<Claims>(
        token,
        &DecodingKey::from_secret(&app.config.jwt_secret),
        &validation,
    );
    let Ok(data) = decoded else {
        return json_error(
            StatusCode::UNAUTHORIZED,
            "invalid or expired token: sign in again",
        );
    };
    let c = data.claims;
    req.extensions_mut().insert(TokenClaims {
        jti: c.jti,
        sub: c.sub,
        org: None,
        iat: c.iat,
        exp: c.exp,
    });
    next.run(req).await
}

async fn logout(
    State(app): State<OrderFlow>,
    Extension(claims): Extension<TokenClaims>,
) -> Response {
    let until = UNIX_EPOCH + Duration::from_secs(claims.exp);
    match app.revocations.revoke(&claims.jti, until).await {
        Ok(_) => StatusCode::NO_CONTENT.into_response(),
        Err(e) => unavailable(e),
    }
}

/// `POST /cart/items` body.
#[derive(Debug, Deserialize)]
pub struct AddItem {
    /// The product.
    pub product_id: u64,
    /// How many (1..=1000).
    pub quantity: i64,
}

async fn add_to(app: &OrderFlow, cart: &str, item: &AddItem) -> Response {
    if !(1..=1000).contains(&item.quantity) {
        return json_error(
            StatusCode::UNPROCESSABLE_ENTITY,
            format!("quantity must be 1..=1000, got {}", item.quantity),
        );
    }
    if !app.db.exists(item.product_id) {
        return json_error(
            StatusCode::NOT_FOUND,
            format!("no product {}", item.product_id),
        );
    }
    match app
        .carts
        .add(cart, &item.product_id.to_string(), item.quantity)
        .await
    {
        Ok(total) => {
            axum::Json(json!({ "product_id": item.product_id, "quantity": total })).into_response()
        }
        Err(e) if e.kind() == fredkit::ErrorKind::Busy => json_error(
            StatusCode::CONFLICT,
            "this cart is being merged at sign-in: retry",
        ),
        Err(e) => unavailable(e),
    }
}

async fn add_item(
    State(app): State<OrderFlow>,
    Extension(claims): Extension<TokenClaims>,
    JsonBody(item): JsonBody<AddItem>,
) -> Response {
    add_to(&app, &OrderFlow::cart_of_user(&claims.sub), &item).await
}

async fn add_anon_item(
    State(app): State<OrderFlow>,
    Path(anon): Path<String>,
    JsonBody(item): JsonBody<AddItem>,
) -> Response {
    if let Err(r) = valid_name("anonymous cart id", &anon) {
        return r.into_response();
    }
    add_to(&app, &format!("anon:{anon}"), &item).await
}

async fn remove_item(
    State(app): State<OrderFlow>,
    Extension(claims): Extension<TokenClaims>,
    Path(raw): Path<String>,
) -> Response {
    let id = match parse_id(&raw) {
        Ok(id) => id,
        Err(r) => return r.into_response(),
    };
    match app
        .carts
        .remove(&OrderFlow::cart_of_user(&claims.sub), &id.to_string())
        .await
    {
        Ok(true) => StatusCode::NO_CONTENT.into_response(),
        Ok(false) => json_error(
            StatusCode::NOT_FOUND,
            format!("product {id} is not in the cart"),
        ),
        Err(e) => unavailable(e),
    }
}

/// The cart's quantities by product id (fields that are not product ids are
/// skipped: nothing else writes there).
async fn cart_items(app: &OrderFlow, cart: &str) -> Result<BTreeMap<u64, u64>, Response> {
    let raw = app.carts.quantities(cart).await.map_err(unavailable)?;
    Ok(raw
        .into_iter()
        .filter_map(|(k, q)| Some((k.parse().ok()?, u64::try_from(q).ok()?)))
        .filter(|(_, q)| *q > 0)
        .collect())
}

async fn cart(State(app): State<OrderFlow>, Extension(claims): Extension<TokenClaims>) -> Response {
    match cart_items(&app, &OrderFlow::cart_of_user(&claims.sub)).await {
        Ok(items) => axum::Json(json!({ "items": items })).into_response(),
        Err(r) => r,
    }
}

async fn checkout(
    State(app): State<OrderFlow>,
    Extension(claims): Extension<TokenClaims>,
) -> Response {
    let cart = OrderFlow::cart_of_user(&claims.sub);
    let items = match cart_items(&app, &cart).await {
        Ok(items) if items.is_empty() => {
            return json_error(StatusCode::BAD_REQUEST, "the cart is empty")
        }
        Ok(items) => items,
        Err(r) => return r.into_response(),
    };
    let resources: Vec<String> = items.keys().map(|id| format!("product:{id}")).collect();
    let set = match app.locks.acquire_all(&resources, &app.checkout_lock).await {
        Ok(Some(set)) => set,
        Ok(None) => {
            return json_error(
                StatusCode::CONFLICT,
                "another checkout holds these products: retry",
            )
        }
        Err(e) => return unavailable(e),
    };
    // Under every product's lock: check, then take, the stock.
    let short: Vec<u64> = items
        .iter()
        .filter(|(id, q)| app.db.stock(**id).unwrap_or(0) < **q)
        .map(|(id, _)| *id)
        .collect();
    let outcome = if !short.is_empty() {
        json_error(
            StatusCode::CONFLICT,
            format!("out of stock: products {short:?}"),
        )
    } else {
        let mut taken = true;
        for (id, q) in &items {
            taken &= app.db.take_stock(*id, *q).await;
        }
        if taken {
            let fencing = items
                .keys()
                .filter_map(|id| Some((*id, set.fencing_token(&format!("product:{id}"))?)))
                .collect();
            let order = app.db.place_order(&claims.sub, items.clone(), fencing);
            metrics::counter!("orderflow_orders_total").increment(1);
            // The e-mail, as a job: idempotent by the order's id.
            let email = OrderEmail {
                order: order.id,
                user: claims.sub.clone(),
            };
            if let Err(e) = app
                .emails
                .enqueue_with(&email, JobOptions::new().id(format!("order-{}", order.id)))
                .await
            {
                tracing::warn!(error = %e, order = order.id, "orderflow: order placed, e-mail not queued");
            }
            for id in items.keys() {
                if let Err(e) = app.carts.remove(&cart, &id.to_string()).await {
                    tracing::warn!(error = %e, "orderflow: order placed, cart not emptied");
                }
            }
            (StatusCode::CREATED, axum::Json(order)).into_response()
        } else {
            json_error(StatusCode::CONFLICT, "out of stock")
        }
    };
    if let Err(e) = set.release().await {
        tracing::warn!(error = %e, "orderflow: lock release failed; the locks expire at their TTL");
    }
    outcome
}
