//! `rewrite:` end to end, against echo servers that answer with the path they received: the new
//! side gets its own path (by prefix or by template, query kept), the monolith always gets the
//! client's, a fallback after a failed rewritten request sends the client's, a shadow copy uses
//! the service's path, and `explain` shows both.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::echo;
use common::proxy::{free_port, rules, strangler, Proxy};
use serde_json::Value;

/// Which server answered and the path it received.
async fn got(client: &reqwest::Client, proxy: &Proxy, path: &str) -> (String, String, reqwest::header::HeaderMap) {
    let r = client.get(proxy.url(path)).send().await.expect("request");
    assert_eq!(r.status(), 200, "{path}");
    let headers = r.headers().clone();
    let v: Value = r.json().await.expect("an echo's JSON");
    (
        v["server"].as_str().unwrap().to_string(),
        v["path"].as_str().unwrap().to_string(),
        headers,
    )
}

fn routes() -> String {
    "  - name: orders-new\n\
     \x20   match: { prefix: /api/orders }\n\
     \x20   mode: migrated\n\
     \x20   service: orders\n\
     \x20   rewrite: { prefix: /v1/orders }\n\
     \x20 - name: items\n\
     \x20   match: { path: \"/api/carts/{cart}/items/{item}\" }\n\
     \x20   mode: migrated\n\
     \x20   service: orders\n\
     \x20   rewrite: { path: \"/lines/{item}/of/{cart}\" }\n\
     \x20 - name: stock-shadow\n\
     \x20   match: { prefix: /api/stock }\n\
     \x20   mode: shadow\n\
     \x20   service: orders\n\
     \x20   rewrite: { prefix: /inventory }\n\
     \x20 - name: pay-broken\n\
     \x20   match: { prefix: /api/pay }\n\
     \x20   mode: migrated\n\
     \x20   service: dead\n\
     \x20   rewrite: { prefix: /payments }\n\
     \x20 - name: plain\n\
     \x20   match: { prefix: /api/plain }\n\
     \x20   mode: migrated\n\
     \x20   service: orders\n"
        .to_string()
}

async fn start() -> (Proxy, String) {
    let mono = echo::start("monolith").await;
    let orders = echo::start("orders").await;
    // Nothing listens here: the service fails to connect and the request falls back.
    let dead: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let text = rules(&[("monolith", mono), ("orders", orders), ("dead", dead)], &routes());
    (Proxy::start(&text).await, text)
}

#[tokio::test(flavor = "multi_thread")]
async fn the_new_side_gets_its_path_and_the_monolith_the_clients() {
    let (proxy, _) = start().await;
    let client = reqwest::Client::new();

    let (server, path, _) = got(&client, &proxy, "/api/orders/7?expand=lines").await;
    assert_eq!(
        (server.as_str(), path.as_str()),
        ("orders", "/v1/orders/7?expand=lines")
    );
    let (_, path, _) = got(&client, &proxy, "/api/orders").await;
    assert_eq!(path, "/v1/orders");
    // Normalized first: the service gets the rewrite of the path that was matched.
    let (_, path, _) = got(&client, &proxy, "/api//orders/./7").await;
    assert_eq!(path, "/v1/orders/7");

    let (server, path, _) = got(&client, &proxy, "/api/carts/c9/items/i3?x=1").await;
    assert_eq!((server.as_str(), path.as_str()), ("orders", "/lines/i3/of/c9?x=1"));

    // A route without a rewrite passes the path as it is.
    let (server, path, _) = got(&client, &proxy, "/api/plain/1").await;
    assert_eq!((server.as_str(), path.as_str()), ("orders", "/api/plain/1"));
    // No route: the monolith, the client's path.
    let (server, path, _) = got(&client, &proxy, "/elsewhere/1?q=2").await;
    assert_eq!((server.as_str(), path.as_str()), ("monolith", "/elsewhere/1?q=2"));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_fallback_after_a_failed_rewritten_request_sends_the_clients_path() {
    let (proxy, _) = start().await;
    let client = reqwest::Client::new();
    let (server, path, headers) = got(&client, &proxy, "/api/pay/42?currency=eur").await;
    assert_eq!(
        (server.as_str(), path.as_str()),
        ("monolith", "/api/pay/42?currency=eur")
    );
    assert!(
        headers.contains_key("x-strangler-fallback"),
        "it fell back: {headers:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_shadow_copy_goes_to_the_services_path() {
    let (proxy, _) = start().await;
    let client = reqwest::Client::new();
    // The monolith answers, with the client's path.
    let (server, path, _) = got(&client, &proxy, "/api/stock/SKU-1?w=3").await;
    assert_eq!((server.as_str(), path.as_str()), ("monolith", "/api/stock/SKU-1?w=3"));
    // The echoes differ (their names and paths), so the copy is kept as a mismatch, with the
    // service's answer: the path it received.
    let deadline = Instant::now() + Duration::from_secs(10);
    let copy = loop {
        let v = proxy.admin_json("/api/mismatches?route=stock-shadow").await;
        if let Some(m) = v["mismatches"].as_array().and_then(|a| a.first()) {
            break m.clone();
        }
        assert!(Instant::now() < deadline, "no copy compared; {}", proxy.log());
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let new: Value = serde_json::from_str(copy["new_body"].as_str().unwrap()).unwrap();
    assert_eq!(new["server"], "orders");
    assert_eq!(new["path"], "/inventory/SKU-1?w=3");
    let legacy: Value = serde_json::from_str(copy["legacy_body"].as_str().unwrap()).unwrap();
    assert_eq!(legacy["path"], "/api/stock/SKU-1?w=3");
}

#[tokio::test(flavor = "multi_thread")]
async fn explain_shows_both_paths() {
    let (proxy, _) = start().await;
    let out = strangler()
        .args(["explain", "GET", "/api/carts/c9/items/i3?x=1", "--config"])
        .arg(&proxy.rules)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}{}", String::from_utf8_lossy(&out.stderr));
    assert!(text.contains("monolith gets /api/carts/c9/items/i3?x=1"), "{text}");
    assert!(
        text.contains("orders gets /lines/i3/of/c9?x=1 (rewrite: path /lines/{item}/of/{cart})"),
        "{text}"
    );
}
