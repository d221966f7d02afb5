//! End-to-end tests of the orders service against a real in-process inventory service.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use orders_service::{FaultSettings, Faults};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio::sync::oneshot;

struct Pair {
    orders: SocketAddr,
    inventory: SocketAddr,
    orders_faults: Faults,
    inventory_faults: Faults,
    http: reqwest::Client,
    _dir: tempfile::TempDir,
    _stop: Vec<oneshot::Sender<()>>,
}

async fn start() -> Pair {
    let dir = tempfile::tempdir().expect("temp dir");
    let (inv_stop, inv_stopped) = oneshot::channel::<()>();
    let inv_listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let inventory = inv_listener.local_addr().expect("addr");
    let inv_config = inventory_service::Config::new(dir.path().join("inventory.db"));
    let inventory_faults = inv_config.faults.clone();
    tokio::spawn(inventory_service::run(inv_listener, inv_config, async {
        let _ = inv_stopped.await;
    }));

    let (ord_stop, ord_stopped) = oneshot::channel::<()>();
    let ord_listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let orders = ord_listener.local_addr().expect("addr");
    let mut config = orders_service::Config::new(dir.path().join("orders.db"));
    config.inventory_url = format!("http://{inventory}");
    let orders_faults = config.faults.clone();
    tokio::spawn(orders_service::run(ord_listener, config, async {
        let _ = ord_stopped.await;
    }));
    // Both serving before a test flips a fault: `until_listening(false)` must not see the state
    // from before the server started.
    inventory_faults.until_listening(true).await;
    orders_faults.until_listening(true).await;
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .expect("client");
    Pair {
        orders,
        inventory,
        orders_faults,
        inventory_faults,
        http,
        _dir: dir,
        _stop: vec![inv_stop, ord_stop],
    }
}

impl Pair {
    async fn call(&self, addr: SocketAddr, method: Method, path: &str, body: Option<Value>) -> (StatusCode, Value) {
        let mut request = self.http.request(method, format!("http://{addr}{path}"));
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.expect("request");
        let status = response.status();
        (status, response.json().await.expect("json"))
    }

    async fn get(&self, path: &str) -> (StatusCode, Value) {
        self.call(self.orders, Method::GET, path, None).await
    }

    async fn order(&self, body: Value) -> (StatusCode, Value) {
        self.call(self.orders, Method::POST, "/api/orders", Some(body)).await
    }

    async fn available(&self, sku: &str) -> i64 {
        let (_, stock) = self
            .call(self.inventory, Method::GET, &format!("/api/inventory/{sku}"), None)
            .await;
        stock["available"].as_i64().expect("available")
    }
}

fn code(body: &Value) -> &str {
    body["error"]["code"].as_str().unwrap_or("<none>")
}

#[tokio::test(flavor = "multi_thread")]
async fn places_orders_through_inventory() {
    let pair = start().await;
    let before = pair.available("SKU-0011").await;
    let (status, order) = pair
        .order(json!({"user_id": 8, "items": [{"sku": "SKU-0011", "quantity": 3}]}))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{order}");
    assert_eq!(order["id"], 121);
    assert_eq!(order["status"], "pending");
    assert_eq!(order["items"][0]["quantity"], 3);
    assert_eq!(
        pair.available("SKU-0011").await,
        before - 3,
        "stock is held in inventory"
    );

    let (status, fetched) = pair.get("/api/orders/121").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(fetched["total_cents"], order["total_cents"]);
    let (status, seeded) = pair.get("/api/orders/1").await;
    assert_eq!(status, StatusCode::OK);
    assert!(seeded["items"].as_array().is_some_and(|items| !items.is_empty()));
    let (status, mine) = pair.get("/api/users/8/orders").await;
    assert_eq!(status, StatusCode::OK);
    assert!(mine["items"]
        .as_array()
        .is_some_and(|o| o.iter().any(|o| o["id"] == 121)));
    let (status, health) = pair.get("/healthz").await;
    assert_eq!((status, &health["service"]), (StatusCode::OK, &json!("orders-service")));
}

#[tokio::test(flavor = "multi_thread")]
async fn rejects_bad_input() {
    let pair = start().await;
    for (body, want_status, want_code) in [
        (
            json!({"user_id": 1, "items": []}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_order",
        ),
        (
            json!({"user_id": 1, "items": [{"sku": "SKU-0001", "quantity": -2}]}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_quantity",
        ),
        (
            json!({"user_id": 1000, "items": [{"sku": "SKU-0001", "quantity": 1}]}),
            StatusCode::NOT_FOUND,
            "not_found",
        ),
        (
            json!({"user_id": 1, "items": [{"sku": "SKU-0000", "quantity": 1}]}),
            StatusCode::NOT_FOUND,
            "not_found",
        ),
        (
            json!({"user_id": 1, "items": "SKU-0001"}),
            StatusCode::BAD_REQUEST,
            "bad_json",
        ),
        (
            json!({"user_id": 1, "items": [], "pad": "x".repeat(70_000)}),
            StatusCode::PAYLOAD_TOO_LARGE,
            "body_too_large",
        ),
    ] {
        let (status, answer) = pair.order(body.clone()).await;
        assert_eq!((status, code(&answer)), (want_status, want_code), "{answer}");
    }
    for (method, path, want_status, want_code) in [
        (Method::GET, "/api/orders/0", StatusCode::NOT_FOUND, "not_found"),
        (Method::GET, "/api/orders/x1", StatusCode::BAD_REQUEST, "bad_id"),
        (Method::GET, "/api/users/61/orders", StatusCode::NOT_FOUND, "not_found"),
        (
            Method::DELETE,
            "/api/orders/1",
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
        ),
        (Method::GET, "/api/payments/order/1", StatusCode::NOT_FOUND, "not_found"),
    ] {
        let (status, answer) = pair.call(pair.orders, method, path, None).await;
        assert_eq!((status, code(&answer)), (want_status, want_code), "{path}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn failed_line_releases_the_others() {
    let pair = start().await;
    let before = pair.available("SKU-0012").await;
    let (status, body) = pair
        .order(json!({"user_id": 2, "items": [{"sku": "SKU-0012", "quantity": 1}, {"sku": "SKU-0080", "quantity": 1}]}))
        .await;
    assert_eq!(
        (status, code(&body)),
        (StatusCode::CONFLICT, "insufficient_stock"),
        "SKU-0080 is sold out"
    );
    assert_eq!(pair.available("SKU-0012").await, before, "the first line was released");
    let (status, _) = pair.get("/api/orders/121").await;
    assert_eq!(status, StatusCode::NOT_FOUND, "no order was written");
}

#[tokio::test(flavor = "multi_thread")]
async fn inventory_down_is_503() {
    let pair = start().await;
    let body = json!({"user_id": 2, "items": [{"sku": "SKU-0013", "quantity": 1}]});
    pair.inventory_faults.set(FaultSettings {
        refuse: true,
        ..FaultSettings::default()
    });
    pair.inventory_faults.until_listening(false).await;
    let (status, answer) = pair.order(body.clone()).await;
    assert_eq!(
        (status, code(&answer)),
        (StatusCode::SERVICE_UNAVAILABLE, "inventory_unavailable")
    );

    pair.inventory_faults.set(FaultSettings {
        error_rate: 1.0,
        ..FaultSettings::default()
    });
    pair.inventory_faults.until_listening(true).await;
    let (status, answer) = pair.order(body.clone()).await;
    assert_eq!(
        (status, code(&answer)),
        (StatusCode::SERVICE_UNAVAILABLE, "inventory_unavailable")
    );

    pair.inventory_faults.reset();
    let (status, answer) = pair.order(body).await;
    assert_eq!(status, StatusCode::CREATED, "{answer}");
}

#[tokio::test(flavor = "multi_thread")]
async fn fault_knobs_on_orders() {
    let pair = start().await;
    pair.orders_faults.set(FaultSettings {
        error_rate: 0.3,
        ..FaultSettings::default()
    });
    let mut failed = 0;
    for _ in 0..100 {
        let (status, body) = pair.get("/api/orders/5").await;
        if status == StatusCode::SERVICE_UNAVAILABLE {
            assert_eq!(code(&body), "injected_fault");
            failed += 1;
        }
    }
    assert!((5..=60).contains(&failed), "{failed} of 100 failed at error_rate 0.3");

    let (status, _) = pair
        .call(
            pair.orders,
            Method::POST,
            "/_faults",
            Some(json!({"reset": true, "latency_ms": 150, "drift": {"field": "items.0.quantity", "value": 42}})),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let started = Instant::now();
    let (status, order) = pair.get("/api/orders/5").await;
    assert!(started.elapsed() >= Duration::from_millis(150));
    assert_eq!(status, StatusCode::OK);
    assert_eq!(order["items"][0]["quantity"], 42);

    let (status, view) = pair.call(pair.orders, Method::GET, "/_faults", None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(view["latency_ms"], 150);

    pair.orders_faults.set(FaultSettings {
        refuse: true,
        ..FaultSettings::default()
    });
    pair.orders_faults.until_listening(false).await;
    let refused = pair.http.get(format!("http://{}/healthz", pair.orders)).send().await;
    assert!(refused.is_err_and(|e| e.is_connect()));
    pair.orders_faults.reset();
    pair.orders_faults.until_listening(true).await;
    assert_eq!(pair.get("/healthz").await.0, StatusCode::OK);
}
