//! Testers first (`force_side:`), end to end against echo servers that show what they received:
//! a trusted request chooses its side on any route with a service (legacy and shadow included),
//! an untrusted one changes nothing, neither header reaches an upstream, and forced requests are
//! counted and marked in the access log.

mod common;

use std::net::SocketAddr;

use common::echo;
use common::proxy::{metric, rules, strangler, Proxy};
use serde_json::Value;

const TOKEN: &str = "tester-token-0123456789";

fn routes() -> &'static str {
    "  - { name: next, match: { prefix: /api/next }, mode: legacy, service: orders }\n\
     \x20 - { name: copied, match: { prefix: /api/copied }, mode: shadow, service: orders }\n\
     \x20 - { name: moved, match: { prefix: /api/moved }, mode: migrated, service: orders }\n\
     \x20 - { name: old, match: { prefix: /api/old }, mode: legacy }\n"
}

async fn start(force: &str, extra: &str) -> Proxy {
    let mono = echo::start("monolith").await;
    let orders = echo::start("orders").await;
    let text = rules(&[("monolith", mono), ("orders", orders)], routes());
    let text = format!("force_side: {force}\n{extra}{text}");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("rules.yaml");
    std::fs::write(&path, text).unwrap();
    Proxy::start_with(
        dir,
        path,
        &[],
        &[("RUST_LOG", "info"), ("STRANGLER_FORCE_TOKEN", TOKEN)],
    )
    .await
}

/// Who answered, and the request headers it received.
async fn ask(proxy: &Proxy, path: &str, headers: &[(&str, &str)]) -> (String, Value) {
    let mut req = reqwest::Client::new().get(proxy.url(path));
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let r = req.send().await.expect("request");
    assert_eq!(r.status(), 200, "{path}");
    let v: Value = r.json().await.expect("an echo's JSON");
    (v["server"].as_str().unwrap().to_string(), v["headers"].clone())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_token_lets_a_tester_choose_the_side_and_nothing_else_does() {
    let proxy = start("{ token_env: STRANGLER_FORCE_TOKEN, cidrs: [10.0.0.0/8] }", "").await;
    let new = [("x-strangler-side", "new"), ("x-strangler-token", TOKEN)];

    // Without trust, the header does nothing.
    assert_eq!(ask(&proxy, "/api/next/1", &[]).await.0, "monolith");
    assert_eq!(
        ask(&proxy, "/api/next/1", &[("x-strangler-side", "new")]).await.0,
        "monolith"
    );
    let wrong = [
        ("x-strangler-side", "new"),
        ("x-strangler-token", "tester-token-0123456788"),
    ];
    assert_eq!(ask(&proxy, "/api/next/1", &wrong).await.0, "monolith");
    // A loopback client is not in 10.0.0.0/8, and a client can't claim to be.
    let claimed = [("x-strangler-side", "new"), ("x-forwarded-for", "10.1.2.3")];
    assert_eq!(ask(&proxy, "/api/next/1", &claimed).await.0, "monolith");

    // With the token: the legacy route's future service, and the shadow route's service.
    let (server, headers) = ask(&proxy, "/api/next/1", &new).await;
    assert_eq!(server, "orders");
    assert!(headers.get("x-strangler-side").is_none(), "forwarded: {headers}");
    assert!(headers.get("x-strangler-token").is_none(), "forwarded: {headers}");
    assert_eq!(ask(&proxy, "/api/copied/1", &new).await.0, "orders");
    // And back: a migrated route's tester can ask for the monolith.
    let legacy = [("x-strangler-side", "legacy"), ("x-strangler-token", TOKEN)];
    let (server, headers) = ask(&proxy, "/api/moved/1", &legacy).await;
    assert_eq!(server, "monolith");
    assert!(headers.get("x-strangler-token").is_none(), "forwarded: {headers}");
    // A route with no service has nowhere else to go.
    assert_eq!(ask(&proxy, "/api/old/1", &new).await.0, "monolith");

    let m = proxy.metrics().await;
    assert_eq!(
        metric(&m, "strangler_forced_total{route=\"next\",side=\"new\"}"),
        1,
        "{m}"
    );
    assert_eq!(metric(&m, "strangler_forced_total{route=\"copied\",side=\"new\"}"), 1);
    assert_eq!(metric(&m, "strangler_forced_total{route=\"moved\",side=\"legacy\"}"), 1);
    let log = proxy.log_with(&["forced=true"]).await;
    let marked: Vec<&str> = log.lines().filter(|l| l.contains("forced=true")).collect();
    assert_eq!(marked.len(), 3, "{log}");
    assert!(
        marked[0].contains("route=next side=\"new\" upstream=orders"),
        "{}",
        marked[0]
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_trusted_network_needs_no_token_and_is_read_through_trusted_proxies() {
    // The loopback client stands for a load balancer; the client behind it is in 10.0.0.0/8.
    let proxy = start(
        "{ header: x-test-side, token_header: x-test-token, cidrs: [10.0.0.0/8] }",
        "trusted_proxies: [127.0.0.1]\n",
    )
    .await;
    let inside = [("x-test-side", "new"), ("x-forwarded-for", "10.1.2.3")];
    let (server, headers) = ask(&proxy, "/api/next/1", &inside).await;
    assert_eq!(server, "orders");
    assert!(headers.get("x-test-side").is_none(), "forwarded: {headers}");
    let outside = [("x-test-side", "new"), ("x-forwarded-for", "10.1.2.3, 192.0.2.9")];
    assert_eq!(ask(&proxy, "/api/next/1", &outside).await.0, "monolith");
    // The default header names mean nothing here.
    let default = [("x-strangler-side", "new"), ("x-forwarded-for", "10.1.2.3")];
    assert_eq!(ask(&proxy, "/api/next/1", &default).await.0, "monolith");
}

#[test]
fn a_force_side_that_trusts_nobody_or_a_missing_token_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let up: SocketAddr = "127.0.0.1:9".parse().unwrap();
    let cases = [
        (
            "{ header: x-side }",
            "force_side trusts nobody: give token_env, token_file or cidrs",
        ),
        (
            "{ token_env: STRANGLER_TEST_UNSET_TOKEN }",
            "rules.yaml:1:26: force_side.token_env: STRANGLER_TEST_UNSET_TOKEN is not set",
        ),
        (
            "{ token_file: short.txt }",
            "force_side: the token has 5 characters; use at least 16",
        ),
        (
            "{ cidrs: [10.0.0.0/33] }",
            "force_side.cidrs: \"10.0.0.0/33\" is not an IP address or CIDR",
        ),
    ];
    std::fs::write(dir.path().join("short.txt"), "short\n").unwrap();
    for (force, want) in cases {
        let path = dir.path().join("rules.yaml");
        std::fs::write(
            &path,
            format!("force_side: {force}\n{}", rules(&[("monolith", up)], "")),
        )
        .unwrap();
        let out = strangler()
            .arg("check")
            .arg(&path)
            .env_remove("STRANGLER_TEST_UNSET_TOKEN")
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "accepted: {force}");
        assert!(err.contains(want), "for {force}\n got: {err}\nwant: {want}");
    }
}
