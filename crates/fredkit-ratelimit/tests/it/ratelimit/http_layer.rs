//! The tower layer in an axum app, driven with `tower::ServiceExt::oneshot`.

use std::net::SocketAddr;

use axum::{body::Body, extract::ConnectInfo, routing::get, Router};
use fredkit_core::BreakerState;
use fredkit_ratelimit::tower::{
    key_fn, ClientIp, HeaderKey, KeyExtractor, RateKey, RateLimitLayer,
};
use http::{HeaderName, Request, Response, StatusCode};
use tower::ServiceExt;

use super::*;

fn router<K>(layer: RateLimitLayer<K>) -> Router
where
    K: KeyExtractor<Body>,
{
    Router::new()
        .route("/", get(|| async { "ok" }))
        .layer(layer)
}

fn from_ip(ip: [u8; 4]) -> Request<Body> {
    Request::builder()
        .uri("/")
        .extension(ConnectInfo(SocketAddr::from((ip, 40_000))))
        .body(Body::empty())
        .unwrap()
}

async fn send(app: &Router, req: Request<Body>) -> Response<Body> {
    app.clone().oneshot(req).await.unwrap()
}

fn header<'a>(res: &'a Response<Body>, name: &str) -> Option<&'a str> {
    res.headers().get(name).map(|v| v.to_str().unwrap())
}

/// `"default";r=2;t=60` -> (2, 60)
fn r_and_t(item: &str) -> (u64, u64) {
    let mut r = None;
    let mut t = None;
    for param in item.split(';').skip(1) {
        let (k, v) = param.trim().split_once('=').unwrap();
        match k {
            "r" => r = Some(v.parse().unwrap()),
            "t" => t = Some(v.parse().unwrap()),
            _ => {}
        }
    }
    (r.unwrap(), t.unwrap())
}

/// Per client IP, 3 requests a minute: 200s carrying the draft and
/// X-RateLimit headers counting down, then 429 with Retry-After; other
/// clients are unaffected; a request without a peer address is refused.
#[rstest]
#[case::standalone(Topology::Standalone)]
#[case::cluster(Topology::Cluster)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn layer_answers_429_with_headers_once_the_limit_is_hit(#[case] topology: Topology) {
    let redis = connect(&shared_url(topology).unwrap()).await.unwrap();
    let prefix = unique_prefix("rl_layer");
    let limiter = build(
        &redis,
        &prefix,
        vec![Limit::fixed_window(3, Duration::from_secs(60))],
    );
    let app = router(RateLimitLayer::new(limiter, ClientIp::new()).x_ratelimit_headers(true));

    for expected in [2, 1, 0] {
        let res = send(&app, from_ip([203, 0, 113, 9])).await;
        assert_eq!(res.status(), StatusCode::OK);
        assert_eq!(
            header(&res, "ratelimit-policy"),
            Some("\"default\";q=3;w=60")
        );
        let item = header(&res, "ratelimit").unwrap();
        assert!(item.starts_with("\"default\";"), "{item}");
        let (r, t) = r_and_t(item);
        assert_eq!(r, expected);
        assert!((1..=60).contains(&t), "{item}");
        assert_eq!(header(&res, "x-ratelimit-limit"), Some("3"));
        assert_eq!(
            header(&res, "x-ratelimit-remaining"),
            Some(expected.to_string().as_str())
        );
        let reset: u64 = header(&res, "x-ratelimit-reset").unwrap().parse().unwrap();
        assert!((1..=60).contains(&reset));
        assert!(header(&res, "retry-after").is_none());
    }
    let res = send(&app, from_ip([203, 0, 113, 9])).await;
    assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS);
    let retry: u64 = header(&res, "retry-after").unwrap().parse().unwrap();
    assert!((1..=60).contains(&retry), "{retry}");
    assert_eq!(r_and_t(header(&res, "ratelimit").unwrap()).0, 0);
    assert_eq!(header(&res, "x-ratelimit-remaining"), Some("0"));

    // Another client has its own quota.
    assert_eq!(
        send(&app, from_ip([198, 51, 100, 1])).await.status(),
        StatusCode::OK
    );
    // No peer address: no key.
    let res = send(
        &app,
        Request::builder().uri("/").body(Body::empty()).unwrap(),
    )
    .await;
    assert_eq!(res.status(), StatusCode::BAD_REQUEST);
    // X-Forwarded-For from an untrusted peer changes nothing.
    let mut spoofed = from_ip([203, 0, 113, 9]);
    spoofed
        .headers_mut()
        .insert("x-forwarded-for", "1.1.1.1".parse().unwrap());
    assert_eq!(
        send(&app, spoofed).await.status(),
        StatusCode::TOO_MANY_REQUESTS
    );
}

/// Two limits keyed by an API-key header: both policies are listed, the
/// tighter one answers 429, `X-RateLimit-*` stay off by default; a closure
/// extractor works the same way.
#[rstest]
#[case::standalone(Topology::Standalone)]
#[case::cluster(Topology::Cluster)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn layer_reports_every_policy_for_header_and_closure_keys(#[case] topology: Topology) {
    let redis = connect(&shared_url(topology).unwrap()).await.unwrap();
    let prefix = unique_prefix("rl_layer_multi");
    let limiter = build(
        &redis,
        &prefix,
        vec![
            Limit::gcra(2, Duration::from_secs(10)).name("burst"),
            Limit::gcra(100, HOUR).name("hour"),
        ],
    );
    let app = router(RateLimitLayer::new(
        limiter.clone(),
        HeaderKey::new(HeaderName::from_static("x-api-key")),
    ));
    let with_key = || {
        Request::builder()
            .uri("/")
            .header("x-api-key", "k1")
            .body(Body::empty())
            .unwrap()
    };
    for _ in 0..2 {
        let res = send(&app, with_key()).await;
        assert_eq!(res.status(), StatusCode::OK);
        assert_eq!(
            header(&res, "ratelimit-policy"),
            Some("\"burst\";q=2;w=10, \"hour\";q=100;w=3600")
        );
        assert!(header(&res, "x-ratelimit-limit").is_none());
    }
    let res = send(&app, with_key()).await;
    assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS);
    let items: Vec<&str> = header(&res, "ratelimit").unwrap().split(", ").collect();
    assert_eq!(items.len(), 2, "{items:?}");
    assert_eq!(r_and_t(items[0]).0, 0);
    assert_eq!(
        r_and_t(items[1]).0,
        98,
        "the denied request consumed nothing"
    );
    let retry: u64 = header(&res, "retry-after").unwrap().parse().unwrap();
    assert!((1..=5).contains(&retry), "one unit refills in 5 s: {retry}");
    // Missing header: no key.
    let res = send(
        &app,
        Request::builder().uri("/").body(Body::empty()).unwrap(),
    )
    .await;
    assert_eq!(res.status(), StatusCode::BAD_REQUEST);

    let closure = router(
        RateLimitLayer::new(
            limiter,
            key_fn(|req: &Request<Body>| req.uri().query().map(str::to_string)),
        )
        .missing_key_status(StatusCode::UNAUTHORIZED),
    );
    let q = |s: &str| {
        Request::builder()
            .uri(format!("/?{s}"))
            .body(Body::empty())
            .unwrap()
    };
    assert_eq!(send(&closure, q("user=7")).await.status(), StatusCode::OK);
    assert_eq!(send(&closure, q("user=7")).await.status(), StatusCode::OK);
    assert_eq!(
        send(&closure, q("user=7")).await.status(),
        StatusCode::TOO_MANY_REQUESTS
    );
    assert_eq!(send(&closure, q("user=8")).await.status(), StatusCode::OK);
    let res = send(
        &closure,
        Request::builder().uri("/").body(Body::empty()).unwrap(),
    )
    .await;
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
}

fn fault_limiter(redis: &Redis, mode: FailMode) -> Limiter {
    let breaker = CircuitBreaker::builder()
        .name(format!("{mode:?}"))
        .minimum_throughput(2)
        .failure_ratio(0.5)
        .break_duration(Duration::from_secs(60))
        .build()
        .unwrap();
    Limiter::builder(redis, "fault")
        .limit(Limit::fixed_window(100, HOUR))
        .fail_mode(mode)
        .breaker(breaker)
        .timeout(Duration::from_millis(300))
        .build()
        .unwrap()
}

/// With the private server (or every cluster master) killed: the fail-open
/// app keeps answering 200 (policy header and `X-RateLimit-Limit`, no
/// made-up `RateLimit` or `X-RateLimit-Remaining/Reset` counts),
/// the fail-closed app answers 429 with Retry-After; both breakers open, so
/// later requests no longer wait for Redis.
#[rstest]
#[case::standalone(Topology::Standalone)]
#[case::cluster(Topology::Cluster)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_server_killed_layers_fail_open_and_fail_closed(#[case] topology: Topology) {
    let mut deployment = Deployment::start(topology);
    let redis = connect(&deployment.url()).await.unwrap();
    let open = fault_limiter(&redis, FailMode::Open);
    let closed = fault_limiter(&redis, FailMode::Closed);
    let app_open =
        router(RateLimitLayer::new(open.clone(), ClientIp::new()).x_ratelimit_headers(true));
    let app_closed =
        router(RateLimitLayer::new(closed.clone(), ClientIp::new()).x_ratelimit_headers(true));

    for app in [&app_open, &app_closed] {
        let res = send(app, from_ip([192, 0, 2, 1])).await;
        assert_eq!(res.status(), StatusCode::OK);
        assert!(header(&res, "ratelimit").is_some());
    }

    deployment.kill();

    for _ in 0..6 {
        let res = send(&app_open, from_ip([192, 0, 2, 1])).await;
        assert_eq!(res.status(), StatusCode::OK);
        assert_eq!(
            header(&res, "ratelimit-policy"),
            Some("\"default\";q=100;w=3600")
        );
        assert!(header(&res, "ratelimit").is_none(), "no made-up counts");
        assert_eq!(header(&res, "x-ratelimit-limit"), Some("100"));
        assert!(
            header(&res, "x-ratelimit-remaining").is_none(),
            "no made-up counts"
        );
        assert!(
            header(&res, "x-ratelimit-reset").is_none(),
            "no made-up counts"
        );

        let res = send(&app_closed, from_ip([192, 0, 2, 1])).await;
        assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS);
        assert!(
            header(&res, "x-ratelimit-remaining").is_none(),
            "no made-up counts"
        );
        let retry: u64 = header(&res, "retry-after").unwrap().parse().unwrap();
        assert!(retry >= 1);
    }
    assert_eq!(open.breaker().state(), BreakerState::Open);
    assert_eq!(closed.breaker().state(), BreakerState::Open);
    let (mo, mc) = (open.metrics(), closed.metrics());
    assert_eq!((mo.allowed, mo.fail_open, mo.fail_closed), (1, 6, 0));
    assert_eq!((mc.allowed, mc.fail_closed, mc.fail_open), (1, 6, 0));
    // With the breaker open, the plain check answers at once too.
    let d = closed.check("anyone", 1).await.unwrap();
    assert!(!d.allowed && d.retry_after.unwrap() > Duration::ZERO);
    assert!(open.check("anyone", 1).await.unwrap().allowed);
}

/// A key extractor that yields an empty key (a closure reading an empty
/// header, say) gets the missing-key status: it is not a limiter error that
/// a fail-open limiter would wave through unlimited.
#[rstest]
#[case::standalone(Topology::Standalone)]
#[case::cluster(Topology::Cluster)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_key_is_refused_not_let_through_by_fail_open(#[case] topology: Topology) {
    let redis = connect(&shared_url(topology).unwrap()).await.unwrap();
    let prefix = unique_prefix("rl_layer_empty");
    let limiter = Limiter::builder(&redis, prefix.trim_end_matches(':'))
        .limit(Limit::fixed_window(1, HOUR))
        .fail_mode(FailMode::Open)
        .build()
        .unwrap();
    let app = router(RateLimitLayer::new(
        limiter.clone(),
        key_fn(|req: &Request<Body>| {
            let user = req.headers().get("x-user")?;
            Some(user.to_str().unwrap_or_default().to_string())
        }),
    ));
    let as_user = |user: &str| {
        Request::builder()
            .uri("/")
            .header("x-user", user)
            .body(Body::empty())
            .unwrap()
    };
    assert_eq!(send(&app, as_user("ann")).await.status(), StatusCode::OK);
    assert_eq!(
        send(&app, as_user("ann")).await.status(),
        StatusCode::TOO_MANY_REQUESTS
    );
    for _ in 0..3 {
        assert_eq!(
            send(&app, as_user("")).await.status(),
            StatusCode::BAD_REQUEST
        );
    }
    let m = limiter.metrics();
    assert_eq!((m.fail_open, m.errors), (0, 0), "{m:?}");
}

/// Two stacked layers: a per-user limit (1 an hour) whose key function
/// skips anonymous requests and the health check, inside a per-IP limit (3
/// an hour) that skips only the health check. Anonymous requests pass the
/// per-user layer unchecked and are counted per IP (a key function could
/// only answer `None`, a 400, before); the health check is never limited
/// and gets no rate-limit headers. The per-user layer's custom rejection
/// replaces the default 429 response (the per-IP layer keeps it), and the
/// layer still adds `Retry-After` and the policy headers to it.
#[rstest]
#[case::standalone(Topology::Standalone)]
#[case::cluster(Topology::Cluster)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_fn_skips_requests_and_a_custom_rejection_replaces_the_429(#[case] topology: Topology) {
    let redis = connect(&shared_url(topology).unwrap()).await.unwrap();
    let prefix = unique_prefix("rl_layer_skip");
    let per_user = build(
        &redis,
        &format!("{prefix}user"),
        vec![Limit::gcra(1, HOUR).name("user")],
    );
    let per_ip = build(
        &redis,
        &format!("{prefix}ip"),
        vec![Limit::fixed_window(3, HOUR).name("ip")],
    );
    let health = |req: &Request<Body>| req.uri().path() == "/health";
    let user_layer = RateLimitLayer::new(
        per_user.clone(),
        key_fn(move |req: &Request<Body>| {
            if health(req) {
                return RateKey::Skip;
            }
            match req.headers().get("x-user") {
                Some(u) => RateKey::Limit(u.to_str().unwrap().to_string()),
                None => RateKey::Skip,
            }
        }),
    )
    .on_rejection(|r| {
        assert!(r.outcome.fallback().is_none());
        Response::builder()
            .status(StatusCode::TOO_MANY_REQUESTS)
            .header("content-type", "application/problem+json")
            .body(format!(r#"{{"title":"slow down","user":"{}"}}"#, r.key))
            .unwrap()
    });
    let ip_layer = RateLimitLayer::new(
        per_ip.clone(),
        key_fn(move |req: &Request<Body>| {
            if health(req) {
                return RateKey::Skip;
            }
            req.headers()
                .get("x-ip")
                .map(|v| v.to_str().unwrap().to_string())
                .into()
        }),
    );
    let app = Router::new()
        .route("/", get(|| async { "ok" }))
        .route("/health", get(|| async { "ok" }))
        .layer(user_layer)
        .layer(ip_layer);
    let req = |path: &str, ip: Option<&str>, user: Option<&str>| {
        let mut b = Request::builder().uri(path);
        if let Some(ip) = ip {
            b = b.header("x-ip", ip);
        }
        if let Some(user) = user {
            b = b.header("x-user", user);
        }
        b.body(Body::empty()).unwrap()
    };

    // The health check: never limited, no headers, no round trip.
    for _ in 0..10 {
        let res = send(&app, req("/health", None, None)).await;
        assert_eq!(res.status(), StatusCode::OK);
        assert!(header(&res, "ratelimit-policy").is_none());
    }
    // A user: the first request passes, the second is refused by the
    // per-user layer with the custom response plus the layer's headers.
    let res = send(&app, req("/", Some("10.0.0.1"), Some("ann"))).await;
    assert_eq!(res.status(), StatusCode::OK);
    let res = send(&app, req("/", Some("10.0.0.1"), Some("ann"))).await;
    assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(
        header(&res, "content-type"),
        Some("application/problem+json")
    );
    let retry: u64 = header(&res, "retry-after").unwrap().parse().unwrap();
    assert!(retry >= 1, "{retry}");
    // (The outer per-IP layer, which allowed it, wrote its own
    // RateLimit-Policy over the inner one's: the outermost layer's win.)
    assert!(header(&res, "ratelimit-policy").is_some());
    let body = axum::body::to_bytes(res.into_body(), 1 << 16)
        .await
        .unwrap();
    assert_eq!(&body[..], br#"{"title":"slow down","user":"ann"}"#);
    // Anonymous requests skip the per-user limit and use up the IP's third
    // unit; the next one gets the per-IP layer's default 429.
    let res = send(&app, req("/", Some("10.0.0.1"), None)).await;
    assert_eq!(res.status(), StatusCode::OK);
    let res = send(&app, req("/", Some("10.0.0.1"), None)).await;
    assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS);
    let body = axum::body::to_bytes(res.into_body(), 1 << 16)
        .await
        .unwrap();
    assert_eq!(&body[..], b"Too Many Requests");
    // Without an IP the per-IP key is missing: 400 as before.
    let res = send(&app, req("/", None, None)).await;
    assert_eq!(res.status(), StatusCode::BAD_REQUEST);
    // Exact counts: the skipped requests never reached the limiters.
    let (u, i) = (per_user.metrics(), per_ip.metrics());
    assert_eq!((u.allowed, u.denied), (1, 1), "{u:?}");
    assert_eq!((i.allowed, i.denied), (3, 1), "{i:?}");
}
