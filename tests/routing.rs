//! Route matching end to end: modes, precedence, segment-boundary prefixes, templates,
//! methods and headers. Echo servers stand in for "which upstream answered".

mod common;

use common::{echo, proxy::rules, proxy::Proxy};
use serde_json::Value;

const ROUTES: &str = r#"
  - name: catalog
    match: { prefix: /api/catalog }
    mode: legacy
  - name: inventory
    match: { prefix: /api/inventory, methods: [GET, HEAD] }
    mode: migrated
    service: svc
  - name: orders-read
    match: { path: "/api/orders/{id}", methods: [GET] }
    mode: shadow
    service: svc
  - name: orders-export
    match: { path: /api/orders/export }
    mode: migrated
    service: svc
  - name: order-items
    match: { path: "/api/orders/{order}/items/{item}" }
    mode: migrated
    service: svc
  - name: orders
    match: { prefix: /api/orders }
    mode: legacy
  - name: orders-v2
    match: { path: /api/orders, methods: [POST], headers: { x-api-version: "2" } }
    mode: migrated
    service: svc
  - name: beta
    match: { prefix: /beta, headers: { x-beta: present } }
    mode: migrated
    service: svc
  - name: reports
    match: { prefix: /reports/daily }
    mode: migrated
    service: svc
  - name: reports-all
    match: { prefix: /reports }
    mode: legacy
"#;

struct Setup {
    proxy: Proxy,
    client: reqwest::Client,
}

async fn setup() -> Setup {
    let mono = echo::start("monolith").await;
    let svc = echo::start("svc").await;
    let proxy = Proxy::start(&rules(&[("monolith", mono), ("svc", svc)], ROUTES)).await;
    Setup {
        proxy,
        client: reqwest::Client::new(),
    }
}

impl Setup {
    /// (route header, upstream header, server that actually answered)
    async fn send(&self, method: &str, path: &str, headers: &[(&str, &str)]) -> (String, String, String) {
        let mut req = self.client.request(method.parse().unwrap(), self.proxy.url(path));
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let resp = req.send().await.expect("request");
        let h = |n: &str| {
            resp.headers()
                .get(n)
                .map(|v| v.to_str().unwrap().to_string())
                .unwrap_or_default()
        };
        let (route, upstream) = (h("x-strangler-route"), h("x-strangler-upstream"));
        let server = if method == "HEAD" {
            upstream.clone()
        } else {
            let body: Value = resp.json().await.expect("echo json");
            body["server"].as_str().unwrap_or_default().to_string()
        };
        (route, upstream, server)
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn routes_go_where_the_rules_say() {
    let s = setup().await;
    // (method, path, request headers, route, server that must answer)
    type Case<'a> = (&'a str, &'a str, &'a [(&'a str, &'a str)], &'a str, &'a str);
    let cases: &[Case] = &[
        // each mode
        ("GET", "/api/catalog/products", &[], "catalog", "monolith"),
        ("GET", "/api/inventory/SKU-0001", &[], "inventory", "svc"),
        ("GET", "/api/orders/17", &[], "orders-read", "monolith"),
        // no rule: legacy, route (none)
        ("GET", "/", &[], "(none)", "monolith"),
        ("GET", "/account/3", &[], "(none)", "monolith"),
        // segment boundaries: /api/inventory never matches /api/inventoryx
        ("GET", "/api/inventory", &[], "inventory", "svc"),
        ("GET", "/api/inventoryx", &[], "(none)", "monolith"),
        ("GET", "/api/inventory/", &[], "inventory", "svc"),
        ("GET", "/api/catalogue", &[], "(none)", "monolith"),
        // methods
        ("HEAD", "/api/inventory/SKU-0001", &[], "inventory", "svc"),
        (
            "POST",
            "/api/inventory/SKU-0001/reservations",
            &[],
            "(none)",
            "monolith",
        ),
        ("DELETE", "/api/orders/17", &[], "orders", "monolith"),
        // precedence: literal path > template > longest prefix > shorter prefix
        ("GET", "/api/orders/export", &[], "orders-export", "svc"),
        ("GET", "/api/orders/9/items/2", &[], "order-items", "svc"),
        ("GET", "/api/orders/9/items", &[], "orders", "monolith"),
        ("GET", "/reports/daily/2026-11-01", &[], "reports", "svc"),
        ("GET", "/reports/weekly", &[], "reports-all", "monolith"),
        ("GET", "/reports/dailyx", &[], "reports-all", "monolith"),
        // headers: exact value, and present
        ("POST", "/api/orders", &[("x-api-version", "2")], "orders-v2", "svc"),
        ("POST", "/api/orders", &[("x-api-version", "1")], "orders", "monolith"),
        ("POST", "/api/orders", &[], "orders", "monolith"),
        ("GET", "/beta/x", &[("x-beta", "yes")], "beta", "svc"),
        ("GET", "/beta/x", &[], "(none)", "monolith"),
    ];
    for (method, path, headers, want_route, want_server) in cases {
        let (route, upstream, server) = s.send(method, path, headers).await;
        assert_eq!(
            (route.as_str(), server.as_str()),
            (*want_route, *want_server),
            "{method} {path} {headers:?}"
        );
        assert_eq!(upstream, server, "x-strangler-upstream names the server that answered");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn requests_are_counted_per_route_and_side() {
    let s = setup().await;
    for _ in 0..3 {
        s.send("GET", "/api/inventory/SKU-0001", &[]).await;
    }
    s.send("GET", "/nowhere", &[]).await;
    let inventory = r#"strangler_requests_total{route="inventory",side="new",status="2xx",upstream="svc"} 3"#;
    let none = r#"strangler_requests_total{route="(none)",side="legacy",status="2xx",upstream="monolith"} 1"#;
    let m = s.proxy.metrics_with(&[inventory, none]).await;
    assert!(m.contains(inventory), "{m}");
    assert!(m.contains(none), "{m}");
    assert!(m.contains(r#"strangler_routes{mode="migrated"} 6"#), "{m}");
    assert!(
        m.contains(r#"strangler_route_info{mode="shadow",route="orders-read",service="svc"} 1"#),
        "{m}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn response_headers_can_be_turned_off() {
    let mono = echo::start("monolith").await;
    let text = rules(
        &[("monolith", mono)],
        "  - { name: all, match: { prefix: / }, mode: legacy }\n",
    )
    .replace("response_headers: true", "response_headers: false");
    let proxy = Proxy::start(&text).await;
    let resp = reqwest::get(proxy.url("/x")).await.unwrap();
    assert!(resp.headers().get("x-strangler-route").is_none());
    assert!(resp.headers().get("x-strangler-upstream").is_none());
    assert_eq!(resp.status(), 200);
}
