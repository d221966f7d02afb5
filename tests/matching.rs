//! Richer matches end to end (cookies, query parameters, header regexes, hosts) against echo
//! servers that show what they received; with the encoded variants an attacker or an odd client
//! would send, each routed as the application behind would read it; and `explain` saying why.

mod common;

use common::echo;
use common::proxy::{raw, rules, strangler, Proxy};
use serde_json::Value;

const ROUTES: &str = "  - { name: beta, match: { prefix: /api/orders, cookies: { beta: \"1\" } }, mode: migrated, service: beta }\n\
     \x20 - { name: v2, match: { prefix: /api/orders, query: { v: 2 } }, mode: migrated, service: v2 }\n\
     \x20 - { name: ios, match: { prefix: /api/orders, headers: { x-client: { regex: \"^ios-[0-9]+$\" } } }, mode: migrated, service: ios }\n\
     \x20 - { name: tenant, match: { prefix: /api/orders, host: \"*.shop.example\" }, mode: migrated, service: tenant }\n";

async fn start() -> (Proxy, String) {
    let mut ups = vec![("monolith", echo::start("monolith").await)];
    for name in ["beta", "v2", "ios", "tenant"] {
        ups.push((name, echo::start(name).await));
    }
    let text = rules(&ups, ROUTES);
    (Proxy::start(&text).await, text)
}

/// Send `GET target` with these header lines, raw (so Host and Cookie go as written), and return
/// who answered and the path and query it received.
async fn ask(proxy: &Proxy, target: &str, lines: &[&str]) -> (String, String) {
    let mut req = format!("GET {target} HTTP/1.1\r\n");
    if !lines.iter().any(|l| l.to_ascii_lowercase().starts_with("host:")) {
        req.push_str("Host: shop.test\r\n");
    }
    for l in lines {
        req.push_str(l);
        req.push_str("\r\n");
    }
    req.push_str("Connection: close\r\n\r\n");
    let (status, text) = raw(proxy.addr, &req).await;
    assert_eq!(status, 200, "{target} {lines:?}\n{text}");
    let body: Value = serde_json::from_str(&text[text.find("\r\n\r\n").unwrap() + 4..]).expect("an echo's JSON");
    (
        body["server"].as_str().unwrap().into(),
        body["path"].as_str().unwrap().into(),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn cookies_query_header_regex_and_host_each_route_their_requests() {
    let (proxy, _) = start().await;
    let cases: &[(&str, &[&str], &str)] = &[
        // Cookies: exact value, among others, quoted, escaped, in a second Cookie header.
        ("/api/orders/1", &["Cookie: beta=1"], "beta"),
        ("/api/orders/1", &["Cookie: session=abc; beta=1; theme=dark"], "beta"),
        ("/api/orders/1", &["Cookie: beta=\"1\""], "beta"),
        ("/api/orders/1", &["Cookie: beta=%31"], "beta"),
        ("/api/orders/1", &["Cookie: a=b", "Cookie: beta=1"], "beta"),
        ("/api/orders/1", &["Cookie: beta=2"], "monolith"),
        ("/api/orders/1", &["Cookie: xbeta=1"], "monolith"),
        ("/api/orders/1", &["Cookie: BETA=1"], "monolith"),
        // Query: exact, escaped name and value, repeated; a longer value is another value.
        ("/api/orders/1?v=2", &[], "v2"),
        ("/api/orders/1?page=3&v=2", &[], "v2"),
        ("/api/orders/1?%76=%32", &[], "v2"),
        ("/api/orders/1?v=1&v=2", &[], "v2"),
        ("/api/orders/1?v=22", &[], "monolith"),
        ("/api/orders/1?vv=2", &[], "monolith"),
        // Header regex, anchored.
        ("/api/orders/1", &["X-Client: ios-17"], "ios"),
        ("/api/orders/1", &["X-Client: ios-17-beta"], "monolith"),
        ("/api/orders/1", &["X-Client: android-14"], "monolith"),
        // Host: any case, a port, a trailing dot; the apex and look-alikes are not under it.
        ("/api/orders/1", &["Host: eu.shop.example"], "tenant"),
        ("/api/orders/1", &["Host: EU.Shop.Example:8443"], "tenant"),
        ("/api/orders/1", &["Host: eu.shop.example."], "tenant"),
        ("/api/orders/1", &["Host: a.b.shop.example"], "tenant"),
        ("/api/orders/1", &["Host: shop.example"], "monolith"),
        ("/api/orders/1", &["Host: evilshop.example"], "monolith"),
        ("/api/orders/1", &["Host: shop.example.evil"], "monolith"),
        // Another path is not the route's, whatever it carries.
        (
            "/api/cart?v=2",
            &["Cookie: beta=1", "Host: eu.shop.example"],
            "monolith",
        ),
    ];
    for (target, lines, want) in cases {
        let (server, path) = ask(&proxy, target, lines).await;
        assert_eq!(server, *want, "{target} {lines:?}");
        // The query reaches the upstream as sent, whoever serves it.
        assert_eq!(path, *target, "{lines:?}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn explain_says_which_condition_passed_a_route_over() {
    let (_proxy, text) = start().await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("rules.yaml");
    std::fs::write(&file, text).unwrap();
    let out = strangler()
        .args([
            "explain",
            "--config",
            file.to_str().unwrap(),
            "GET",
            "/api/orders/1?v=2",
        ])
        .args(["-H", "cookie: beta=2", "-H", "host: shop.example"])
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.contains("skipped:     route \"beta\" (line 10): cookie beta = 1 does not hold"),
        "{out}"
    );
    assert!(out.contains("route:       v2 (line 11)"), "{out}");
    assert!(out.contains("matched by:  prefix /api/orders, query v = 2"), "{out}");
    let out = strangler()
        .args(["explain", "--config", file.to_str().unwrap(), "GET", "/api/orders/1"])
        .args(["-H", "host: shop.example"])
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.contains("route \"tenant\" (line 13): host shop.example does not match host *.shop.example"),
        "{out}"
    );
    assert!(out.contains("route:       (none)"), "{out}");
}
