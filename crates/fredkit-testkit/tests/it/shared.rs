//! Shared topologies, key prefixes and independent servers, checked with the real fred client.

// Helpers outside #[test] functions are test code too.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::HashSet;

use fred::prelude::*;
use fredkit_testkit::{shared_url, unique_prefix, IndependentServers, Topology};

/// Writes and reads one key through fred, as the code under test will.
async fn round_trip(url: &str, key: &str) -> String {
    let client = Builder::from_config(Config::from_url(url).unwrap())
        .build()
        .unwrap();
    client.init().await.unwrap();
    client
        .set::<(), _, _>(key, "value", None, None, false)
        .await
        .unwrap();
    let value: String = client.get(key).await.unwrap();
    client.quit().await.unwrap();
    value
}

#[tokio::test]
async fn shared_url_is_started_once_and_serves_fred_for_every_topology() {
    for topology in Topology::ALL {
        let url = shared_url(topology).unwrap();
        assert_eq!(shared_url(topology).unwrap(), url, "{topology:?}");
        let key = format!("{}k", unique_prefix("shared_url"));
        assert_eq!(round_trip(&url, &key).await, "value", "{topology:?} {url}");
    }
}

#[test]
fn shared_url_is_the_same_across_threads() {
    let urls: HashSet<String> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..4)
            .map(|_| s.spawn(|| shared_url(Topology::Standalone).unwrap()))
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert_eq!(urls.len(), 1, "{urls:?}");
}

#[test]
fn unique_prefixes_never_repeat_and_never_form_a_hash_tag() {
    let prefixes: Vec<String> = (0..10_000).map(|_| unique_prefix("my{test}name")).collect();
    let distinct: HashSet<&String> = prefixes.iter().collect();
    assert_eq!(distinct.len(), prefixes.len());
    for p in &prefixes {
        assert!(p.starts_with("t:my_test_name:"), "{p}");
        assert!(p.ends_with(':'), "{p}");
        assert!(!p.contains('{') && !p.contains('}'), "{p}");
    }
}

#[test]
fn independent_servers_are_distinct_and_share_no_data() {
    let servers = IndependentServers::start(5).unwrap();
    let ports: HashSet<u16> = servers.servers().iter().map(|s| s.port()).collect();
    assert_eq!(ports.len(), 5);
    assert_eq!(servers.urls().len(), 5);
    let first = &servers.servers()[0];
    first.command(&["SET", "only-here", "1"]).unwrap();
    for (i, server) in servers.servers().iter().enumerate() {
        let role = server.command(&["ROLE"]).unwrap();
        assert_eq!(role.as_array().unwrap()[0].as_str(), Some("master"));
        let value = server.command(&["GET", "only-here"]).unwrap();
        assert_eq!(value.is_nil(), i != 0, "server {i}");
        assert_eq!(servers.urls()[i], server.url());
    }
    assert!(IndependentServers::start(0).is_err());
}
