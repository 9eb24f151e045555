#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! The example programs run against real servers, standalone and cluster:
//! what they print is what the facade promises.

use axum::body::Body;
use fredkit_testkit::{shared_url, unique_prefix, Topology};
use http::{Request, StatusCode};
use rstest::rstest;
use tower::ServiceExt;

async fn redis(topology: Topology) -> fredkit::Redis {
    let url = shared_url(topology).unwrap();
    fredkit_testkit::connect(&url).await.unwrap()
}

#[rstest]
#[case::standalone(Topology::Standalone)]
#[case::cluster(Topology::Cluster)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quickstart_does_what_the_readme_says(#[case] topology: Topology) {
    let redis = redis(topology).await;
    let report = fredkit_examples::quickstart::run(&redis, &unique_prefix("ex_quickstart"))
        .await
        .unwrap();
    assert_eq!(
        report.loader_runs, 1,
        "{report:?}: one load for 10 concurrent misses"
    );
    assert_eq!(report.product.cents, 450);
    assert_eq!(report.allowed, 20, "{report:?}: the burst, no more");
    assert!(
        report.tokens.1 > report.tokens.0,
        "{report:?}: fencing tokens increase"
    );
    assert!(report.revoked, "{report:?}");
    assert_eq!(
        report.handled, 3,
        "{report:?}: every published order handled"
    );
    redis.shutdown().await.unwrap();
}

fn get(path: &str, user: &str, token: &str) -> Request<Body> {
    Request::get(path)
        .header("x-client", "c1")
        .header("x-user", user)
        .header("x-token", token)
        .body(Body::empty())
        .unwrap()
}

#[rstest]
#[case::standalone(Topology::Standalone)]
#[case::cluster(Topology::Cluster)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn service_serves_refuses_revoked_tokens_and_limits(#[case] topology: Topology) {
    let redis = redis(topology).await;
    let (app, state) = fredkit_examples::service::router(&redis, &unique_prefix("ex_service"), 4)
        .await
        .unwrap();
    let status = |req: Request<Body>| {
        let app = app.clone();
        async move { app.oneshot(req).await.unwrap().status() }
    };

    // 1: served.
    assert_eq!(status(get("/products/7", "42", "t1")).await, StatusCode::OK);
    // 2: no credentials: authentication refuses.
    let anonymous = Request::get("/products/7")
        .header("x-client", "c1")
        .body(Body::empty())
        .unwrap();
    assert_eq!(status(anonymous).await, StatusCode::UNAUTHORIZED);
    // 3: user 42 logged out everywhere: the same token is now refused by the
    // revocation layer (it runs after authentication, so it sees the claims).
    state.revocations.revoke_subject_now("42").await.unwrap();
    assert_eq!(
        status(get("/products/7", "42", "t1")).await,
        StatusCode::UNAUTHORIZED
    );
    // 4: another user checks out under the lock.
    let checkout = Request::post("/checkout/9")
        .header("x-client", "c1")
        .header("x-user", "7")
        .header("x-token", "t2")
        .body(Body::empty())
        .unwrap();
    assert_eq!(status(checkout).await, StatusCode::OK);
    // 5: 4 per hour for client c1, counted before authentication: refused.
    assert_eq!(
        status(get("/products/7", "7", "t2")).await,
        StatusCode::TOO_MANY_REQUESTS
    );
    redis.shutdown().await.unwrap();
}
