//! `cargo xtask demo [--serve]`: the OrderFlow run. Starts a throwaway
//! `redis-server` (or uses `REDIS_URL`), starts two OrderFlow instances
//! sharing one database (`examples/orderflow`), drives a scripted load that
//! shows each of the seed's tasks, and prints what it saw with the metrics
//! behind it. `--serve` keeps the service running afterwards and prints its
//! URL. The per-crate tour is `cargo xtask tour`.

use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use fredkit_conn::{Redis, RedisConfig};
use metrics_exporter_prometheus::PrometheusBuilder;
use orderflow::{Config, OrderFlow};
use reqwest::{Client, StatusCode};
use serde_json::{json, Value};

use crate::redis_setup;

/// Runs `cargo xtask demo`.
pub(crate) fn run(args: &[String]) -> Result<()> {
    let serve = args.iter().any(|a| a == "--serve");
    if let Some(other) = args.iter().find(|a| a.as_str() != "--serve") {
        anyhow::bail!(
            "unknown argument `{other}`: `cargo xtask demo [--serve]` (the per-crate tour is `cargo xtask tour`)"
        );
    }
    let (url, server) = match std::env::var("REDIS_URL") {
        Ok(url) if !url.trim().is_empty() => (url, None),
        _ => {
            redis_setup::ensure_redis()?;
            let server = fredkit_testkit::RedisServer::start()
                .context("could not start a throwaway redis-server")?;
            println!(
                "==> started a throwaway redis-server at {} (it goes away when the demo ends)",
                server.url()
            );
            (server.url(), Some(server))
        }
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("could not build a tokio runtime")?;
    let outcome = runtime.block_on(demo(url, serve));
    drop(runtime);
    drop(server);
    outcome
}

/// One line of the summary.
struct Seen {
    task: &'static str,
    did: String,
    saw: String,
    ok: bool,
}

async fn demo(url: String, serve: bool) -> Result<()> {
    let started = Instant::now();
    let metrics = PrometheusBuilder::new()
        .install_recorder()
        .context("could not install the Prometheus recorder")?;
    let redis =
        Redis::connect(RedisConfig::from_url(&url).context("REDIS_URL is not a valid Redis URL")?)
            .await?;
    let prefix = format!("orderflow-demo:{:08x}", rand::random::<u32>());
    let config = Config {
        prefix,
        requests_per_minute: 20,
        db_latency: Duration::from_millis(100),
        metrics: Some(metrics),
        ..Config::default()
    };
    let a = OrderFlow::new(&redis, config.clone()).await?;
    let b = OrderFlow::with_database(&redis, config, a.db.clone()).await?;
    let base_a = listen(&a).await?;
    let base_b = listen(&b).await?;
    println!("==> OrderFlow instances at {base_a} and {base_b} (one database, one Redis)");
    let http = Client::builder()
        .pool_max_idle_per_host(256)
        .timeout(Duration::from_secs(30))
        .build()?;
    let mut seen = Vec::new();

    // 1. Product cache: 200 concurrent cold reads of one product, split
    //    over both instances.
    let reads = (0..200).map(|i| {
        let url = format!("{}/products/1", if i % 2 == 0 { &base_a } else { &base_b });
        let http = http.clone();
        async move { http.get(url).send().await.map(|r| r.status()) }
    });
    let statuses = futures::future::join_all(reads).await;
    let ok = statuses
        .iter()
        .filter(|s| matches!(s, Ok(StatusCode::OK)))
        .count();
    let loads = a.db.product_loads();
    seen.push(Seen {
        task: "1. product cache",
        did: "200 concurrent cold GET /products/1 on 2 instances".into(),
        saw: format!("{ok} × 200 OK, {loads} database load(s)"),
        ok: ok == 200 && loads == 1,
    });

    // 2. Cart: an anonymous cart merged at login.
    for (product, quantity) in [(2, 1), (3, 2)] {
        let r = http
            .post(format!("{base_a}/anon/visitor/cart/items"))
            .json(&json!({ "product_id": product, "quantity": quantity }))
            .send()
            .await?;
        ensure!(
            r.status() == StatusCode::OK,
            "anonymous add: {}",
            r.status()
        );
    }
    let ann = login(&http, &base_a, "ann", Some("visitor")).await?;
    let cart: Value = http
        .get(format!("{base_b}/cart"))
        .bearer_auth(&ann)
        .send()
        .await?
        .json()
        .await?;
    seen.push(Seen {
        task: "2. cart",
        did: "anonymous cart {2: 1, 3: 2}, then login as ann".into(),
        saw: format!("ann's cart on the other instance: {}", cart["items"]),
        ok: cart["items"] == json!({ "2": 1, "3": 2 }),
    });

    // 4. Checkout lock: two users, two instances, the last item.
    a.db.set_stock(7, 1);
    let bob = login(&http, &base_a, "bob", None).await?;
    let cy = login(&http, &base_b, "cy", None).await?;
    for (base, token) in [(&base_a, &bob), (&base_b, &cy)] {
        let r = http
            .post(format!("{base}/cart/items"))
            .bearer_auth(token)
            .json(&json!({ "product_id": 7, "quantity": 1 }))
            .send()
            .await?;
        ensure!(r.status() == StatusCode::OK, "add: {}", r.status());
    }
    let (x, y) = tokio::join!(
        http.post(format!("{base_a}/checkout"))
            .bearer_auth(&bob)
            .send(),
        http.post(format!("{base_b}/checkout"))
            .bearer_auth(&cy)
            .send()
    );
    let mut statuses = [x?.status(), y?.status()];
    statuses.sort();
    let orders = a.db.orders().len();
    seen.push(Seen {
        task: "4. checkout lock",
        did: "2 concurrent checkouts of the last item (stock 1)".into(),
        saw: format!(
            "{} and {}; {orders} order, stock {}",
            statuses[0],
            statuses[1],
            a.db.stock(7).unwrap_or(0)
        ),
        ok: statuses == [StatusCode::CREATED, StatusCode::CONFLICT] && orders == 1,
    });

    // The order's e-mail: a job run by one of the instances' workers.
    let deadline = Instant::now() + Duration::from_secs(20);
    while a.db.emails_sent().is_empty() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let emails = a.db.emails_sent();
    seen.push(Seen {
        task: "   order e-mails",
        did: "the order's confirmation e-mail, a fredkit-jobs job".into(),
        saw: format!("{} e-mail(s) sent by the job workers", emails.len()),
        ok: emails.len() == orders,
    });

    // 3. Rate limit: a burst past 20/min for one user.
    let dee = login(&http, &base_a, "dee", None).await?;
    let (mut allowed, mut limited, mut last_remaining) = (0, 0, String::new());
    for _ in 0..25 {
        let r = http
            .get(format!("{base_a}/cart"))
            .bearer_auth(&dee)
            .send()
            .await?;
        if let Some(v) = r.headers().get("x-ratelimit-remaining") {
            last_remaining = v.to_str().unwrap_or("?").to_string();
        }
        match r.status() {
            StatusCode::OK => allowed += 1,
            StatusCode::TOO_MANY_REQUESTS => limited += 1,
            other => anyhow::bail!("unexpected {other} in the burst"),
        }
    }
    seen.push(Seen {
        task: "3. rate limit",
        did: "a burst of 25 GET /cart by one user (limit 20/min, sliding)".into(),
        saw: format!("{allowed} × 200, {limited} × 429 (X-RateLimit-Remaining: {last_remaining})"),
        ok: allowed == 20 && limited == 5,
    });

    // Logout: revoked on every instance.
    let r = http
        .post(format!("{base_a}/logout"))
        .bearer_auth(&ann)
        .send()
        .await?;
    ensure!(
        r.status() == StatusCode::NO_CONTENT,
        "logout: {}",
        r.status()
    );
    let after = http
        .get(format!("{base_b}/cart"))
        .bearer_auth(&ann)
        .send()
        .await?
        .status();
    seen.push(Seen {
        task: "   logout",
        did: "ann logs out on one instance, then calls the other".into(),
        saw: format!("{after}"),
        ok: after == StatusCode::UNAUTHORIZED,
    });

    // 5. Metrics: what /metrics says about the load above.
    let text = http
        .get(format!("{base_a}/metrics"))
        .send()
        .await?
        .text()
        .await?;
    let pick = |name: &str, label: &str| -> f64 {
        text.lines()
            .filter(|l| l.starts_with(name) && l.contains(label))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    };
    let metric_lines = [
        (
            "fredkit_lock_acquire_total{outcome=granted}",
            pick("fredkit_lock_acquire_total{", "outcome=\"granted\""),
        ),
        (
            "fredkit_lock_acquire_wait_seconds_count",
            pick("fredkit_lock_acquire_wait_seconds_count", ""),
        ),
        (
            "fredkit_ratelimit_check_total{outcome=denied}",
            pick("fredkit_ratelimit_check_total{", "outcome=\"denied\""),
        ),
        (
            "fredkit_revocation_revoked_total",
            pick("fredkit_revocation_revoked_total", ""),
        ),
        ("orderflow_orders_total", pick("orderflow_orders_total", "")),
    ];
    seen.push(Seen {
        task: "5. metrics",
        did: "GET /metrics (Prometheus text)".into(),
        saw: format!(
            "{} lines, {} fredkit series",
            text.lines().count(),
            text.lines().filter(|l| l.starts_with("fredkit_")).count()
        ),
        ok: metric_lines[4].1 == 1.0 && metric_lines[2].1 == 5.0,
    });

    // In the seed's order of tasks (logout last).
    seen.sort_by_key(|s| match s.task {
        "   order e-mails" => "4z",
        t if t.starts_with(' ') => "9",
        t => t,
    });
    println!();
    println!("{:<18} {:<60} what it saw", "task", "what the demo did");
    println!("{}", "-".repeat(132));
    for s in &seen {
        println!(
            "{:<18} {:<60} {} {}",
            s.task,
            s.did,
            s.saw,
            if s.ok { "✓" } else { "✗ (unexpected)" }
        );
    }
    println!();
    println!("metrics behind it (from /metrics):");
    for (name, value) in &metric_lines {
        println!("  {name:<48} {value}");
    }
    println!();
    println!(
        "scripted load took {:.1} s",
        started.elapsed().as_secs_f64()
    );
    let failed: Vec<&str> = seen.iter().filter(|s| !s.ok).map(|s| s.task).collect();
    ensure!(
        failed.is_empty(),
        "unexpected results in: {}",
        failed.join(", ")
    );
    if serve {
        println!();
        println!("==> serving OrderFlow at {base_a} (and {base_b}); /metrics, /health, /products/1 ... Ctrl-C to stop");
        tokio::signal::ctrl_c().await?;
    }
    a.shutdown().await;
    b.shutdown().await;
    redis.shutdown().await?;
    Ok(())
}

/// Serves `app` on a free local port; its base URL.
async fn listen(app: &OrderFlow) -> Result<String> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let router = app.router();
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, router).await {
            eprintln!("OrderFlow stopped: {e}");
        }
    });
    Ok(format!("http://{addr}"))
}

async fn login(http: &Client, base: &str, user: &str, anon: Option<&str>) -> Result<String> {
    let r = http
        .post(format!("{base}/login"))
        .json(&json!({ "user": user, "anon_cart": anon }))
        .send()
        .await?;
    ensure!(r.status() == StatusCode::OK, "login: {}", r.status());
    let body: Value = r.json().await?;
    body["token"]
        .as_str()
        .map(str::to_string)
        .context("login answered without a token")
}
