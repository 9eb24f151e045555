//! OrderFlow end to end over real HTTP (a listening socket, reqwest) against
//! the testkit's Redis, standalone and cluster: each of the seed's tasks'
//! invariants asserted exactly, and the edge's answers to bad input.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use fredkit_testkit::{shared_redis, unique_prefix, Topology};
use orderflow::{Config, Database, OrderFlow};
use reqwest::{Client, StatusCode};
use rstest::rstest;
use serde_json::{json, Value};

struct Running {
    base: String,
    app: OrderFlow,
    http: Client,
}

impl Running {
    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    async fn login(&self, user: &str, anon_cart: Option<&str>) -> String {
        let r = self
            .http
            .post(self.url("/login"))
            .json(&json!({ "user": user, "anon_cart": anon_cart }))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK);
        let body: Value = r.json().await.unwrap();
        body["token"].as_str().unwrap().to_string()
    }

    async fn add(&self, token: &str, product: u64, quantity: i64) -> StatusCode {
        self.http
            .post(self.url("/cart/items"))
            .bearer_auth(token)
            .json(&json!({ "product_id": product, "quantity": quantity }))
            .send()
            .await
            .unwrap()
            .status()
    }
}

/// Serves an instance on a free port; `db` shared when given (several
/// instances of one service).
async fn serve(
    topology: Topology,
    prefix: &str,
    config: Config,
    db: Option<Arc<Database>>,
) -> Running {
    let redis = shared_redis(topology).await.unwrap();
    let config = Config {
        prefix: prefix.to_string(),
        ..config
    };
    let app = match db {
        Some(db) => OrderFlow::with_database(&redis, config, db).await.unwrap(),
        None => OrderFlow::new(&redis, config).await.unwrap(),
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let router = app.router();
    tokio::spawn(async move {
        axum::serve(listener, router).await.unwrap();
    });
    Running {
        base: format!("http://{addr}"),
        app,
        http: Client::builder()
            .pool_max_idle_per_host(256)
            .timeout(Duration::from_secs(30))
            .build()
            .unwrap(),
    }
}

fn config() -> Config {
    Config {
        db_latency: Duration::from_millis(100),
        ..Config::default()
    }
}

/// Task 1: 200 concurrent cold reads of one product → one database load,
/// on two instances; an update invalidates it on both.
#[rstest]
#[case::standalone(Topology::Standalone)]
#[case::cluster(Topology::Cluster)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cold_product_reads_load_once_and_updates_invalidate(#[case] topology: Topology) {
    let prefix = unique_prefix("orderflow_cache");
    let a = serve(topology, &prefix, config(), None).await;
    let b = serve(topology, &prefix, config(), Some(a.app.db.clone())).await;
    let reads = (0..200).map(|i| {
        let (http, url) = if i % 2 == 0 {
            (a.http.clone(), a.url("/products/3"))
        } else {
            (b.http.clone(), b.url("/products/3"))
        };
        async move {
            let r = http.get(url).send().await.unwrap();
            assert_eq!(r.status(), StatusCode::OK);
            r.json::<Value>().await.unwrap()
        }
    });
    let bodies = futures::future::join_all(reads).await;
    assert!(bodies.iter().all(|b| b["cents"] == 300), "{:?}", bodies[0]);
    assert_eq!(a.app.db.product_loads(), 1, "one load for 200 cold reads");

    let r = a
        .http
        .put(a.url("/products/3"))
        .json(&json!({ "cents": 999 }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    // Both instances serve the new price (b's L1, if any, was invalidated).
    for instance in [&a, &b] {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        loop {
            let p: Value = instance
                .http
                .get(instance.url("/products/3"))
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            if p["cents"] == 999 {
                break;
            }
            assert!(tokio::time::Instant::now() < deadline, "stale price {p}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    // Unknown products are 404 and cached as absent (one load each).
    let loads = a.app.db.product_loads();
    for _ in 0..3 {
        let r = a.http.get(a.url("/products/4242")).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::NOT_FOUND);
    }
    assert_eq!(a.app.db.product_loads(), loads + 1);
}

/// Task 4: two users check out the last item at the same time → one
/// order, stock 0, the other told it is out of stock. Without the lock the
/// database's read-modify-write would sell it twice.
#[rstest]
#[case::standalone(Topology::Standalone)]
#[case::cluster(Topology::Cluster)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_checkouts_of_the_last_item_place_one_order(#[case] topology: Topology) {
    let prefix = unique_prefix("orderflow_checkout");
    let a = serve(topology, &prefix, config(), None).await;
    let b = serve(topology, &prefix, config(), Some(a.app.db.clone())).await;
    a.app.db.set_stock(7, 1);
    let alice = a.login("alice", None).await;
    let bob = b.login("bob", None).await;
    assert_eq!(a.add(&alice, 7, 1).await, StatusCode::OK);
    assert_eq!(b.add(&bob, 7, 1).await, StatusCode::OK);
    let checkout = |r: &Running, token: String| {
        let (http, url) = (r.http.clone(), r.url("/checkout"));
        async move {
            http.post(url)
                .bearer_auth(token)
                .send()
                .await
                .unwrap()
                .status()
        }
    };
    let (x, y) = tokio::join!(checkout(&a, alice.clone()), checkout(&b, bob.clone()));
    let mut statuses = [x, y];
    statuses.sort();
    assert_eq!(statuses, [StatusCode::CREATED, StatusCode::CONFLICT]);
    assert_eq!(a.app.db.stock(7), Some(0));
    let orders = a.app.db.orders();
    assert_eq!(orders.len(), 1, "{orders:?}");
    assert_eq!(orders[0].items, BTreeMap::from([(7, 1)]));
    // Its confirmation e-mail is a job, run by one of the instances' workers.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while a.app.db.emails_sent().is_empty() && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(a.app.db.emails_sent(), vec![orders[0].id]);
    // The winner's cart is empty; the loser's still holds the item.
    let winner = if orders[0].user == "alice" {
        &alice
    } else {
        &bob
    };
    let cart: Value = a
        .http
        .get(a.url("/cart"))
        .bearer_auth(winner)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(cart["items"], json!({}));
}

/// Task 2: an anonymous cart merged at login, items added atomically.
#[rstest]
#[case::standalone(Topology::Standalone)]
#[case::cluster(Topology::Cluster)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_anonymous_cart_is_merged_at_login(#[case] topology: Topology) {
    let prefix = unique_prefix("orderflow_cart");
    let a = serve(topology, &prefix, config(), None).await;
    for (product, quantity) in [(1, 2), (2, 1), (1, 3)] {
        let r = a
            .http
            .post(a.url("/anon/visitor-1/cart/items"))
            .json(&json!({ "product_id": product, "quantity": quantity }))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK);
    }
    let token = a.login("carol", None).await;
    assert_eq!(a.add(&token, 2, 4).await, StatusCode::OK);
    // 40 concurrent single adds: the quantity is exact.
    let adds = (0..40).map(|_| a.add(&token, 3, 1));
    assert!(futures::future::join_all(adds)
        .await
        .iter()
        .all(|s| *s == StatusCode::OK));
    let token = a.login("carol", Some("visitor-1")).await;
    let cart: Value = a
        .http
        .get(a.url("/cart"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(cart["items"], json!({ "1": 5, "2": 5, "3": 40 }));
}

/// Task 3: a burst past the per-user limit gets 429 with headers; another
/// user is not affected.
#[rstest]
#[case::standalone(Topology::Standalone)]
#[case::cluster(Topology::Cluster)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_past_the_limit_gets_429_with_headers(#[case] topology: Topology) {
    let prefix = unique_prefix("orderflow_rl");
    let a = serve(
        topology,
        &prefix,
        Config {
            requests_per_minute: 5,
            ..config()
        },
        None,
    )
    .await;
    let token = a.login("dave", None).await;
    let mut remaining = Vec::new();
    let mut limited = 0;
    for _ in 0..8 {
        let r = a
            .http
            .get(a.url("/cart"))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap();
        let left = r
            .headers()
            .get("x-ratelimit-remaining")
            .expect("X-RateLimit-Remaining on every answer")
            .to_str()
            .unwrap()
            .parse::<u64>()
            .unwrap();
        assert!(r.headers().contains_key("x-ratelimit-limit"));
        match r.status() {
            StatusCode::OK => remaining.push(left),
            StatusCode::TOO_MANY_REQUESTS => {
                limited += 1;
                let body: Value = r.json().await.unwrap();
                assert_eq!(body["error"], "rate limit exceeded");
            }
            other => panic!("{other}"),
        }
    }
    assert_eq!(remaining, [4, 3, 2, 1, 0]);
    assert_eq!(limited, 3);
    let other = a.login("erin", None).await;
    let r = a
        .http
        .get(a.url("/cart"))
        .bearer_auth(&other)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
}

/// Logout revokes the token on every instance; other tokens still work.
#[rstest]
#[case::standalone(Topology::Standalone)]
#[case::cluster(Topology::Cluster)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_logged_out_token_is_refused_everywhere(#[case] topology: Topology) {
    let prefix = unique_prefix("orderflow_logout");
    let a = serve(topology, &prefix, config(), None).await;
    let b = serve(topology, &prefix, config(), Some(a.app.db.clone())).await;
    let token = a.login("frank", None).await;
    let second = a.login("frank", None).await;
    let get = |r: &Running, t: &str| {
        let req = r.http.get(r.url("/cart")).bearer_auth(t);
        async move { req.send().await.unwrap().status() }
    };
    assert_eq!(get(&b, &token).await, StatusCode::OK);
    let r = a
        .http
        .post(a.url("/logout"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    assert_eq!(get(&a, &token).await, StatusCode::UNAUTHORIZED);
    assert_eq!(get(&b, &token).await, StatusCode::UNAUTHORIZED);
    assert_eq!(get(&b, &second).await, StatusCode::OK);
    assert_eq!(get(&a, "not-a-jwt").await, StatusCode::UNAUTHORIZED);
}

/// Bad input at the edge: a 4xx with a JSON error, never a 500.
#[rstest]
#[case::standalone(Topology::Standalone)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_a_4xx_with_a_json_error(#[case] topology: Topology) {
    let prefix = unique_prefix("orderflow_bad");
    let a = serve(topology, &prefix, config(), None).await;
    let token = a.login("gina", None).await;
    let raw = |body: String| {
        a.http
            .post(a.url("/cart/items"))
            .bearer_auth(&token)
            .header("content-type", "application/json")
            .body(body)
    };
    let cases = [
        (
            "malformed JSON",
            raw("{\"product_id\": ".into()),
            StatusCode::BAD_REQUEST,
        ),
        (
            "wrong shape",
            raw("{\"product\": 1}".into()),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            "negative quantity",
            raw("{\"product_id\": 1, \"quantity\": -2}".into()),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            "unknown product",
            raw("{\"product_id\": 999, \"quantity\": 1}".into()),
            StatusCode::NOT_FOUND,
        ),
        (
            "oversized body",
            raw(format!(
                "{{\"product_id\": 1, \"quantity\": 1, \"pad\": \"{}\"}}",
                "x".repeat(orderflow::MAX_BODY_BYTES + 1)
            )),
            StatusCode::PAYLOAD_TOO_LARGE,
        ),
        (
            "not JSON at all",
            a.http
                .post(a.url("/cart/items"))
                .bearer_auth(&token)
                .body("quantity=1"),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
        ),
        (
            "non-numeric product id",
            a.http.get(a.url("/products/abc")),
            StatusCode::BAD_REQUEST,
        ),
        (
            "bad user name",
            a.http.post(a.url("/login")).json(&json!({ "user": "" })),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            "checkout of an empty cart",
            a.http.post(a.url("/checkout")).bearer_auth(&token),
            StatusCode::BAD_REQUEST,
        ),
        (
            "unknown route",
            a.http.get(a.url("/nope")),
            StatusCode::NOT_FOUND,
        ),
    ];
    for (what, request, expected) in cases {
        let r = request.send().await.unwrap();
        assert_eq!(r.status(), expected, "{what}");
        let body: Value = r
            .json()
            .await
            .unwrap_or_else(|e| panic!("{what}: not JSON: {e}"));
        assert!(body["error"].is_string(), "{what}: {body}");
    }
}

/// The value of the sample `name{labels...}` in Prometheus text, 0 when
/// absent.
fn sample(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| l.starts_with(&format!("{name}{{")) || l.starts_with(&format!("{name} ")))
        .filter(|l| {
            labels
                .iter()
                .all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// `/metrics` after a scripted load: each crate's counters with the exact
/// counts of that load, and its latency histograms with the right sample
/// counts.
#[rstest]
#[case::standalone(Topology::Standalone)]
#[case::cluster(Topology::Cluster)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_show_the_exact_counts_of_a_load(#[case] topology: Topology) {
    let handle = metrics_exporter_prometheus::PrometheusBuilder::new()
        .install_recorder()
        .expect("one recorder per test process");
    let prefix = unique_prefix("orderflow_metrics");
    let a = serve(
        topology,
        &prefix,
        Config {
            requests_per_minute: 4,
            metrics: Some(handle),
            ..config()
        },
        None,
    )
    .await;
    let token = a.login("hank", None).await;
    // 4 authenticated requests allowed, the 5th and 6th limited.
    assert_eq!(a.add(&token, 1, 2).await, StatusCode::OK);
    assert_eq!(a.add(&token, 2, 1).await, StatusCode::OK);
    let r = a
        .http
        .post(a.url("/checkout"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    let r = a
        .http
        .post(a.url("/logout"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    for _ in 0..2 {
        // Revoked: refused by the revocation layer before the limiter.
        let r = a
            .http
            .get(a.url("/cart"))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    }
    let token = a.login("hank", None).await;
    for expected in [StatusCode::TOO_MANY_REQUESTS, StatusCode::TOO_MANY_REQUESTS] {
        let r = a
            .http
            .get(a.url("/cart"))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), expected);
    }

    let text = a
        .http
        .get(a.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    // KeySpace drops the trailing ':' of the testkit's prefixes.
    let base = prefix.trim_end_matches(':');
    let locks = format!("{base}:locks");
    let rl = format!("{base}:rl");
    let revoked = format!("{base}:revoked");
    assert_eq!(sample(&text, "orderflow_orders_total", &[]), 1.0, "{text}");
    // One checkout of two products: two grants, each released.
    let lock = |o: &'static str| [("prefix", locks.as_str()), ("outcome", o)];
    assert_eq!(
        sample(&text, "fredkit_lock_acquire_total", &lock("granted")),
        2.0
    );
    assert_eq!(
        sample(&text, "fredkit_lock_release_total", &lock("released")),
        2.0
    );
    assert_eq!(
        sample(
            &text,
            "fredkit_lock_hold_seconds_count",
            &[("prefix", locks.as_str())]
        ),
        2.0
    );
    // acquire_all takes the locks one acquire at a time.
    assert_eq!(
        sample(
            &text,
            "fredkit_lock_acquire_wait_seconds_count",
            &[("prefix", locks.as_str())]
        ),
        2.0
    );
    let check = |o: &'static str| [("prefix", rl.as_str()), ("outcome", o)];
    assert_eq!(
        sample(&text, "fredkit_ratelimit_check_total", &check("allowed")),
        4.0
    );
    assert_eq!(
        sample(&text, "fredkit_ratelimit_check_total", &check("denied")),
        2.0
    );
    assert_eq!(
        sample(
            &text,
            "fredkit_ratelimit_check_seconds_count",
            &[("prefix", rl.as_str())]
        ),
        6.0
    );
    // Every authenticated request is checked for revocation: 4 + 2 + 2.
    let rv = [("prefix", revoked.as_str())];
    assert_eq!(
        sample(&text, "fredkit_revocation_redis_reads_total", &rv),
        8.0
    );
    assert_eq!(sample(&text, "fredkit_revocation_revoked_total", &rv), 2.0);
    assert_eq!(
        sample(&text, "fredkit_revocation_read_seconds_count", &rv),
        8.0
    );
}

/// The dashboard page is served (one HTML file, no build step) with the
/// Redis memory figures it charts.
#[rstest]
#[case::standalone(Topology::Standalone)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_and_its_memory_figures_are_served(#[case] topology: Topology) {
    let a = serve(topology, &unique_prefix("orderflow_dash"), config(), None).await;
    let r = a.http.get(a.url("/dashboard")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert!(r.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/html"));
    let page = r.text().await.unwrap();
    for needle in ["/metrics", "/dashboard/redis", "dashboardState", "<svg"] {
        assert!(page.contains(needle), "the page lacks {needle}");
    }
    let memory: Value = a
        .http
        .get(a.url("/dashboard/redis"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(memory["used_memory"].as_u64().unwrap() > 0, "{memory}");
}

/// The dashboard in headless Chromium after a load: the page scraped
/// `/metrics` and every chart that has data drew non-empty series; a
/// screenshot goes to target/orderflow-dashboard.png. Skipped, saying so,
/// where Chromium is not installed (`cargo xtask test` installs it when it
/// runs as root).
#[rstest]
#[case::standalone(Topology::Standalone)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_renders_charts_with_data_in_chromium(#[case] topology: Topology) {
    let Some(chromium) = ["chromium", "chromium-browser", "google-chrome"]
        .into_iter()
        .find(|b| {
            std::process::Command::new(b)
                .arg("--version")
                .output()
                .is_ok()
        })
    else {
        eprintln!("SKIPPED: no chromium on PATH (apt-get install chromium)");
        return;
    };
    let handle = metrics_exporter_prometheus::PrometheusBuilder::new()
        .install_recorder()
        .expect("one recorder per test process");
    let a = serve(
        topology,
        &unique_prefix("orderflow_chromium"),
        Config {
            requests_per_minute: 3,
            metrics: Some(handle),
            ..config()
        },
        None,
    )
    .await;
    let token = a.login("ivy", None).await;
    assert_eq!(a.add(&token, 1, 1).await, StatusCode::OK);
    let r = a
        .http
        .post(a.url("/checkout"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    // Keep traffic going while the page scrapes, so rates have data.
    let load = {
        let (http, url, token) = (a.http.clone(), a.url("/cart"), token.clone());
        tokio::spawn(async move {
            for _ in 0..100 {
                let _ = http.get(&url).bearer_auth(&token).send().await;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    };
    let target = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target");
    let screenshot = target.join("orderflow-dashboard.png");
    let profile = tempfile_dir();
    let run = |extra: Vec<String>| {
        let mut args = vec![
            "--headless".to_string(),
            "--no-sandbox".into(),
            "--disable-gpu".into(),
            "--disable-dev-shm-usage".into(),
            format!("--user-data-dir={}", profile.display()),
            "--virtual-time-budget=6000".into(),
            "--window-size=1400,1100".into(),
        ];
        args.extend(extra);
        args.push(a.url("/dashboard"));
        let chromium = chromium.to_string();
        tokio::task::spawn_blocking(move || {
            std::process::Command::new(chromium).args(args).output()
        })
    };
    let dom = run(vec!["--dump-dom".into()]).await.unwrap().unwrap();
    let dom = String::from_utf8_lossy(&dom.stdout).to_string();
    let shot = run(vec![format!("--screenshot={}", screenshot.display())])
        .await
        .unwrap()
        .unwrap();
    load.abort();
    let attr = |name: &str| -> Option<String> {
        let start = dom.find(&format!("data-{name}=\""))? + name.len() + 7;
        let end = dom[start..].find('"')? + start;
        Some(dom[start..end].replace("&quot;", "\""))
    };
    let scrapes: u32 = attr("scrapes")
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("the page never scraped /metrics: {dom}"));
    assert!(scrapes >= 2, "{scrapes} scrapes");
    let series: Value = serde_json::from_str(&attr("series").unwrap()).unwrap();
    for chart in [
        "ratelimit",
        "latency_rl",
        "latency_lock",
        "locks",
        "orders",
        "memory",
    ] {
        assert!(
            series[chart].as_u64().unwrap_or(0) > 0,
            "chart {chart} drew no data: {series}"
        );
    }
    assert!(
        shot.status.success(),
        "{}",
        String::from_utf8_lossy(&shot.stderr)
    );
    assert!(screenshot.exists());
}

fn tempfile_dir() -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("orderflow-chromium-{}", std::process::id()));
    let _ = std::fs::create_dir_all(&dir);
    dir
}
