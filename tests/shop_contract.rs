//! Contract test of the bundled shop: each extracted service answers exactly like the monolith
//! for the endpoints it takes over (same status, same JSON apart from volatile fields).
//!
//! Both sides are compared as they answer over HTTP, parsed into `serde_json::Value`s and nothing
//! else: no Rust wire type of the shop is used here, so a field renamed, added or dropped on one
//! side shows up as a difference instead of being hidden by a type both sides share.

mod common;

use std::fmt::Write as _;
use std::net::SocketAddr;

use common::shop::{stable, start_shop, Shop};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

/// Which server the monolith is compared with.
#[derive(Clone, Copy)]
enum Service {
    Inventory,
    Orders,
}

impl Service {
    fn name(self) -> &'static str {
        match self {
            Service::Inventory => "inventory-service",
            Service::Orders => "orders-service",
        }
    }
}

/// One request, sent to both servers.
struct Case {
    method: Method,
    path: String,
    body: Option<Body>,
    /// The answer is a record created now, so `created_at` is volatile.
    created: bool,
}

enum Body {
    Json(Value),
    Raw(&'static str, String),
}

fn get(path: impl Into<String>) -> Case {
    Case {
        method: Method::GET,
        path: path.into(),
        body: None,
        created: false,
    }
}

fn post(path: impl Into<String>, body: Value) -> Case {
    Case {
        method: Method::POST,
        path: path.into(),
        body: Some(Body::Json(body)),
        created: true,
    }
}

fn raw(path: &str, content_type: &'static str, body: impl Into<String>) -> Case {
    Case {
        method: Method::POST,
        path: path.into(),
        body: Some(Body::Raw(content_type, body.into())),
        created: false,
    }
}

fn delete(path: impl Into<String>) -> Case {
    Case {
        method: Method::DELETE,
        path: path.into(),
        body: None,
        created: false,
    }
}

/// Status and JSON body (volatile fields removed) of one answer.
async fn send(client: &reqwest::Client, addr: SocketAddr, case: &Case) -> (StatusCode, Value) {
    let mut request = client.request(case.method.clone(), format!("http://{addr}{}", case.path));
    request = match &case.body {
        Some(Body::Json(value)) => request.json(value),
        Some(Body::Raw(kind, text)) => request.header("content-type", *kind).body(text.clone()),
        None => request,
    };
    let response = request
        .send()
        .await
        .unwrap_or_else(|e| panic!("{} {} on {addr}: {e}", case.method, case.path));
    let status = response.status();
    let text = response.text().await.expect("body");
    let value = serde_json::from_str(&text)
        .unwrap_or_else(|_| panic!("{} {} on {addr}: not JSON: {text}", case.method, case.path));
    (status, stable(value, case.created))
}

/// One answer as a single JSON value, so status and body are compared by the same walk.
fn answer((status, body): (StatusCode, Value)) -> Value {
    json!({ "status": status.as_u16(), "body": body })
}

/// Every place where `monolith` and `service` differ, one line each, named by its path
/// (`body.items[0].sku`). Empty when they are equal. Object keys are compared by name, so a
/// renamed field shows as one key only the monolith has and one only the service has.
fn differences(monolith: &Value, service: &Value) -> Vec<String> {
    let mut out = Vec::new();
    walk("", monolith, service, &mut out);
    out
}

fn walk(path: &str, monolith: &Value, service: &Value, out: &mut Vec<String>) {
    let at = |key: &str| {
        if path.is_empty() {
            key.to_string()
        } else {
            format!("{path}.{key}")
        }
    };
    match (monolith, service) {
        (Value::Object(left), Value::Object(right)) => {
            for (key, l) in left {
                match right.get(key) {
                    Some(r) => walk(&at(key), l, r, out),
                    None => out.push(format!("{}: only the monolith has it ({})", at(key), short(l))),
                }
            }
            for (key, r) in right {
                if !left.contains_key(key) {
                    out.push(format!("{}: only the service has it ({})", at(key), short(r)));
                }
            }
        }
        (Value::Array(left), Value::Array(right)) => {
            if left.len() != right.len() {
                out.push(format!(
                    "{path}: the monolith has {} items, the service {}",
                    left.len(),
                    right.len()
                ));
            }
            for (i, (l, r)) in left.iter().zip(right).enumerate() {
                walk(&format!("{path}[{i}]"), l, r, out);
            }
        }
        (l, r) if l == r => {}
        (l, r) => out.push(format!("{path}: monolith {}, service {}", short(l), short(r))),
    }
}

/// A value for a failure message; long ones cut, the 64 KiB cases would drown the report.
fn short(value: &Value) -> String {
    let text = value.to_string();
    match text.char_indices().nth(80) {
        Some((cut, _)) => format!("{}...", &text[..cut]),
        None => text,
    }
}

/// Lines of differences shown per request; a renamed field in a list repeats once per item.
const SHOWN_PER_CASE: usize = 8;

/// Sends every case to the monolith and then to the service, in order, compares the answers as
/// JSON values, and fails once at the end listing every request that differed and where.
async fn assert_same(shop: &Shop, service: Service, cases: &[Case]) {
    let client = reqwest::Client::new();
    let other = match service {
        Service::Inventory => shop.inventory,
        Service::Orders => shop.orders,
    };
    let mut report = String::new();
    let mut failed = 0;
    for case in cases {
        let legacy = answer(send(&client, shop.monolith, case).await);
        let new = answer(send(&client, other, case).await);
        let found = differences(&legacy, &new);
        if found.is_empty() {
            continue;
        }
        failed += 1;
        let _ = writeln!(report, "{} {}:", case.method, case.path);
        for line in found.iter().take(SHOWN_PER_CASE) {
            let _ = writeln!(report, "    {line}");
        }
        if found.len() > SHOWN_PER_CASE {
            let _ = writeln!(report, "    ... and {} more", found.len() - SHOWN_PER_CASE);
        }
    }
    assert!(
        failed == 0,
        "{failed} of {} requests answered differently by legacy-monolith and {}:\n{report}",
        cases.len(),
        service.name()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn inventory_matches_the_monolith() {
    let shop = start_shop().await;
    let mut cases: Vec<Case> = [1, 2, 17, 40, 137, 240]
        .iter()
        .map(|id| get(format!("/api/inventory/SKU-{id:04}")))
        .collect();
    cases.extend([
        get("/api/inventory/SKU-9999"),
        get("/api/inventory/sku-0001"),
        post("/api/inventory/SKU-0003/reservations", json!({"quantity": 4})),
        post(
            "/api/inventory/SKU-0003/reservations",
            json!({"quantity": 1, "order_id": 7}),
        ),
        get("/api/inventory/SKU-0003"),
        post("/api/inventory/SKU-0040/reservations", json!({"quantity": 1})),
        post("/api/inventory/SKU-0003/reservations", json!({"quantity": 1000})),
        post("/api/inventory/SKU-9999/reservations", json!({"quantity": 1})),
        post("/api/inventory/SKU-0003/reservations", json!({"quantity": 0})),
        post("/api/inventory/SKU-0003/reservations", json!({"quantity": -3})),
        post("/api/inventory/SKU-0003/reservations", json!({"quantity": "3"})),
        post("/api/inventory/SKU-0003/reservations", json!({})),
        raw(
            "/api/inventory/SKU-0003/reservations",
            "application/json",
            "{\"quantity\": ",
        ),
        raw(
            "/api/inventory/SKU-0003/reservations",
            "text/plain",
            "{\"quantity\": 1}",
        ),
        raw(
            "/api/inventory/SKU-0003/reservations",
            "application/json",
            format!("{{\"quantity\": 1, \"pad\": \"{}\"}}", "x".repeat(70_000)),
        ),
        delete("/api/inventory/reservations/1"),
        delete("/api/inventory/reservations/1"),
        delete("/api/inventory/reservations/999"),
        delete("/api/inventory/reservations/abc"),
        get("/api/inventory/SKU-0003"),
        delete("/api/inventory/SKU-0003"),
    ]);
    assert_same(&shop, Service::Inventory, &cases).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn orders_reads_match_the_monolith() {
    let shop = start_shop().await;
    let mut cases: Vec<Case> = [1, 2, 17, 33, 60, 99, 120]
        .iter()
        .map(|id| get(format!("/api/orders/{id}")))
        .collect();
    cases.extend([1, 7, 30, 60].iter().map(|id| get(format!("/api/users/{id}/orders"))));
    cases.extend([
        get("/api/orders/0"),
        get("/api/orders/121"),
        get("/api/orders/-5"),
        get("/api/orders/abc"),
        get("/api/orders/99999999999999999999"),
        get("/api/users/61/orders"),
        get("/api/users/x/orders"),
        delete("/api/orders/1"),
    ]);
    assert_same(&shop, Service::Orders, &cases).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn placing_orders_matches_the_monolith() {
    let shop = start_shop().await;
    let line = |sku: &str, quantity: i64| json!({"sku": sku, "quantity": quantity});
    let cases = [
        post(
            "/api/orders",
            json!({"user_id": 5, "items": [line("SKU-0001", 2), line("SKU-0002", 1)]}),
        ),
        post("/api/orders", json!({"user_id": 6, "items": [line("SKU-0004", 1)]})),
        Case {
            created: true,
            ..get("/api/orders/121")
        },
        Case {
            created: true,
            ..get("/api/orders/122")
        },
        get("/api/users/5/orders"),
        // All or nothing: the second line can't be met, so the first is not held either.
        post(
            "/api/orders",
            json!({"user_id": 5, "items": [line("SKU-0001", 1), line("SKU-0040", 1)]}),
        ),
        post("/api/orders", json!({"user_id": 5, "items": [line("SKU-0005", 1000)]})),
        post("/api/orders", json!({"user_id": 5, "items": []})),
        post("/api/orders", json!({"user_id": 5, "items": [line("SKU-0001", -1)]})),
        post("/api/orders", json!({"user_id": 5, "items": [line("SKU-0001", 0)]})),
        post("/api/orders", json!({"user_id": 5, "items": [line("SKU-0001", 1001)]})),
        post("/api/orders", json!({"user_id": 999, "items": [line("SKU-0001", 1)]})),
        post("/api/orders", json!({"user_id": 5, "items": [line("NOPE", 1)]})),
        post("/api/orders", json!({"user_id": "5", "items": []})),
        post("/api/orders", json!({"items": []})),
        post("/api/orders", json!([5])),
        raw("/api/orders", "application/json", "not json"),
        raw("/api/orders", "text/plain", "{}"),
        raw(
            "/api/orders",
            "application/json",
            format!("{{\"pad\": \"{}\"}}", "x".repeat(70_000)),
        ),
        get("/api/orders/123"),
    ];
    assert_same(&shop, Service::Orders, &cases).await;

    // Stock ends up the same in the monolith and in the inventory service.
    let mut stock: Vec<Case> = (1..=5).map(|id| get(format!("/api/inventory/SKU-{id:04}"))).collect();
    stock.push(get("/api/inventory/SKU-0040"));
    assert_same(&shop, Service::Inventory, &stock).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn unknown_routes_and_health_have_the_same_shape() {
    let shop = start_shop().await;
    let client = reqwest::Client::new();
    for addr in [shop.monolith, shop.inventory, shop.orders] {
        let (status, body) = send(&client, addr, &get("/no/such/thing")).await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        assert_eq!(body["error"]["code"], "not_found");
        let (status, body) = send(&client, addr, &get("/healthz")).await;
        assert_eq!((status, &body["status"]), (StatusCode::OK, &json!("ok")));
    }
}

/// `differences` sorted, so the unit tests don't depend on the order of a JSON object's keys.
fn sorted_differences(monolith: &Value, service: &Value) -> Vec<String> {
    let mut found = differences(monolith, service);
    found.sort();
    found
}

#[test]
fn differences_name_the_renamed_key() {
    let monolith = json!({"status": 200, "body": {"sku": "SKU-0001", "on_hand": 5, "available": 5}});
    let service = json!({"status": 200, "body": {"sku": "SKU-0001", "qty": 5, "available": 5}});
    assert_eq!(
        sorted_differences(&monolith, &service),
        [
            "body.on_hand: only the monolith has it (5)",
            "body.qty: only the service has it (5)",
        ]
    );
}

#[test]
fn differences_walk_into_lists_and_report_status_and_values() {
    let monolith = json!({"status": 201, "body": {"items": [{"sku": "A", "quantity": 1}, {"sku": "B"}]}});
    let service = json!({"status": 200, "body": {"items": [{"sku": "A", "quantity": "1"}]}});
    assert_eq!(
        sorted_differences(&monolith, &service),
        [
            "body.items: the monolith has 2 items, the service 1",
            "body.items[0].quantity: monolith 1, service \"1\"",
            "status: monolith 201, service 200",
        ]
    );
    assert!(differences(&monolith, &monolith.clone()).is_empty());
}
