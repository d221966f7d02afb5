//! The monolith's OpenAPI document (`legacy-monolith/openapi.json`, served at `/openapi.json`):
//! it lists exactly the monolith's routes, each answered by the real monolith; and with
//! `discovery.openapi` its operations join the migration map, the ones nobody calls as `unseen`.

mod common;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use common::proxy::{metric, rules, strangler, Proxy};
use common::shop::start_shop;
use serde_json::Value;

fn document() -> Value {
    serde_json::from_str(legacy_monolith::OPENAPI).expect("openapi.json is JSON")
}

/// (METHOD, template) of every operation in the document.
fn operations(doc: &Value) -> BTreeSet<(String, String)> {
    let mut out = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().expect("paths") {
        for m in ["get", "put", "post", "delete", "patch", "head", "options"] {
            if item.get(m).is_some() {
                out.insert((m.to_ascii_uppercase(), path.clone()));
            }
        }
    }
    out
}

/// (METHOD, template) of every `.route("...", method(...))` in the monolith's router, and the
/// `/healthz` every shop server gets from shop-kit.
fn router_routes() -> BTreeSet<(String, String)> {
    let src = include_str!("../legacy-monolith/src/lib.rs");
    let mut out = BTreeSet::from([("GET".to_string(), "/healthz".to_string())]);
    for line in src.lines().map(str::trim).filter(|l| l.starts_with(".route(\"")) {
        let rest = &line[".route(\"".len()..];
        let (path, rest) = rest.split_once('"').expect("a quoted path");
        let method = rest.trim_start_matches([',', ' ']).split('(').next().unwrap();
        out.insert((method.to_ascii_uppercase(), path.to_string()));
    }
    assert!(out.len() > 10, "routes found: {out:?}");
    out
}

#[tokio::test(flavor = "multi_thread")]
async fn the_document_lists_exactly_the_monoliths_routes_and_each_is_served() {
    let doc = document();
    let ops = operations(&doc);
    assert_eq!(
        ops,
        router_routes(),
        "legacy-monolith/openapi.json and the router disagree"
    );

    let shop = start_shop().await;
    let client = reqwest::Client::new();
    for (method, template) in &ops {
        let path = template
            .replace("{id}", "1")
            .replace("{order_id}", "1")
            .replace("{sku}", "SKU-0001");
        let url = format!("http://{}{path}", shop.monolith);
        let req = client.request(method.parse().unwrap(), &url);
        let req = if method == "POST" {
            req.json(&serde_json::json!({}))
        } else {
            req
        };
        let r = req.send().await.expect("request");
        let status = r.status().as_u16();
        let body = r.text().await.unwrap_or_default();
        assert!(
            status != 405 && !body.contains("no such route"),
            "{method} {path}: {status} {body}"
        );
    }
    // The monolith serves the document itself.
    let served = client
        .get(format!("http://{}/openapi.json", shop.monolith))
        .send()
        .await
        .unwrap();
    assert_eq!(served.status(), 200);
    assert_eq!(served.json::<Value>().await.unwrap()["paths"], doc["paths"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn documented_operations_nobody_calls_show_as_unseen() {
    let shop = start_shop().await;
    let text = rules(
        &[("monolith", shop.monolith), ("orders", shop.orders)],
        "  - { name: orders-read, match: { path: \"/api/orders/{id}\", methods: [GET] }, mode: shadow, service: orders }\n",
    )
    .replacen(
        "routes:",
        &format!(
            "discovery: {{ openapi: \"http://{}/openapi.json\" }}\nroutes:",
            shop.monolith
        ),
        1,
    );
    let proxy = Proxy::start(&text).await;
    let client = reqwest::Client::new();
    for path in [
        "/api/orders/1",
        "/api/catalog/products",
        "/api/payments/order/2",
        "/products/3",
    ] {
        let r = client.get(proxy.url(path)).send().await.unwrap();
        assert!(r.status() == 200 || r.status() == 404, "{path}: {}", r.status());
    }

    // The map folds once a second.
    let deadline = Instant::now() + Duration::from_secs(10);
    let map = loop {
        let map = proxy.admin_json("/api/endpoints").await;
        let seen = map["endpoints"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["requests"].as_u64() > Some(0))
            .count();
        if seen == 4 || Instant::now() > deadline {
            break map;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let rows: BTreeSet<(String, String, String)> = map["endpoints"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            let s = |k: &str| e[k].as_str().unwrap().to_string();
            (s("method"), s("template"), s("state"))
        })
        .collect();
    let ops = operations(&document());
    let called = [
        ("GET", "/api/orders/{id}", "shadow"),
        ("GET", "/api/catalog/products", "legacy"),
        // The document's own parameter name, not the learner's {id}.
        ("GET", "/api/payments/order/{order_id}", "legacy"),
        ("GET", "/products/{id}", "legacy"),
    ];
    let mut want: BTreeSet<(String, String, String)> = ops
        .iter()
        .map(|(m, t)| (m.clone(), t.clone(), "unseen".to_string()))
        .filter(|(m, t, _)| !called.iter().any(|(cm, ct, _)| cm == m && ct == t))
        .collect();
    want.extend(
        called
            .iter()
            .map(|(m, t, s)| (m.to_string(), t.to_string(), s.to_string())),
    );
    assert_eq!(rows, want, "{map:#}");

    // Filtered, counted, and left out of progress.
    let unseen = proxy.admin_json("/api/endpoints?state=unseen").await;
    let n = unseen["endpoints"].as_array().unwrap().len();
    assert_eq!(n, ops.len() - called.len());
    assert!(unseen["endpoints"]
        .as_array()
        .unwrap()
        .iter()
        .all(|e| e["state"] == "unseen"));
    assert_eq!(map["progress"]["endpoints"], called.len());
    let m = proxy
        .metrics_with(&[&format!("strangler_endpoints{{state=\"unseen\"}} {n}")])
        .await;
    assert_eq!(metric(&m, "strangler_endpoints{state=\"unseen\"}"), n as u64, "{m}");
}

#[test]
fn a_document_that_cannot_be_read_is_refused_with_its_place() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("rules.yaml");
    std::fs::write(
        &file,
        "legacy: m\nupstreams:\n  m: { url: \"http://127.0.0.1:1\" }\ndiscovery: { openapi: missing.json }\nroutes: []\n",
    )
    .unwrap();
    let out = strangler().args(["check", file.to_str().unwrap()]).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("rules.yaml:4:23: discovery.openapi: can't read") && err.contains("missing.json"),
        "{err}"
    );
}
