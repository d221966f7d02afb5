//! End-to-end tests of the inventory service: its API and every fault knob.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use inventory_service::{Config, Drift, FaultSettings, Faults};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio::sync::oneshot;

struct Inventory {
    addr: SocketAddr,
    faults: Faults,
    http: reqwest::Client,
    _dir: tempfile::TempDir,
    _stop: oneshot::Sender<()>,
}

async fn start() -> Inventory {
    let dir = tempfile::tempdir().expect("temp dir");
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (stop, stopped) = oneshot::channel::<()>();
    let config = Config::new(dir.path().join("inventory.db"));
    let faults = config.faults.clone();
    tokio::spawn(inventory_service::run(listener, config, async {
        let _ = stopped.await;
    }));
    // Serving before a test flips a fault: `until_listening(false)` must not see the state from
    // before the server started.
    faults.until_listening(true).await;
    // A fresh connection per request, so "refuse" is seen by the very next call.
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .expect("client");
    Inventory {
        addr,
        faults,
        http,
        _dir: dir,
        _stop: stop,
    }
}

impl Inventory {
    async fn try_call(&self, method: Method, path: &str, body: Option<Value>) -> reqwest::Result<(StatusCode, Value)> {
        let mut request = self.http.request(method, format!("http://{}{path}", self.addr));
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await?;
        let status = response.status();
        Ok((status, response.json().await?))
    }

    async fn call(&self, method: Method, path: &str, body: Option<Value>) -> (StatusCode, Value) {
        self.try_call(method, path, body).await.expect("request")
    }

    async fn get(&self, path: &str) -> (StatusCode, Value) {
        self.call(Method::GET, path, None).await
    }

    async fn post(&self, path: &str, body: Value) -> (StatusCode, Value) {
        self.call(Method::POST, path, Some(body)).await
    }
}

fn code(body: &Value) -> &str {
    body["error"]["code"].as_str().unwrap_or("<none>")
}

#[tokio::test(flavor = "multi_thread")]
async fn stock_and_reservations() {
    let inv = start().await;
    let (status, stock) = inv.get("/api/inventory/SKU-0010").await;
    assert_eq!(status, StatusCode::OK);
    let on_hand = stock["on_hand"].as_i64().expect("on_hand");
    assert_eq!(stock["available"], on_hand);
    assert!(stock["served_at"].is_string() && stock["request_id"].is_string());

    let (status, held) = inv
        .post("/api/inventory/SKU-0010/reservations", json!({"quantity": 2}))
        .await;
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(held["available"], on_hand - 2);
    assert_eq!(held["order_id"], Value::Null);
    let path = format!("/api/inventory/reservations/{}", held["id"]);
    let (status, body) = inv.call(Method::DELETE, &path, None).await;
    assert_eq!((status, &body["released"]), (StatusCode::OK, &json!(true)));
    let (status, body) = inv.call(Method::DELETE, &path, None).await;
    assert_eq!((status, code(&body)), (StatusCode::NOT_FOUND, "not_found"));

    for (method, path, body, want_status, want_code) in [
        (
            Method::GET,
            "/api/inventory/NOPE",
            None,
            StatusCode::NOT_FOUND,
            "not_found",
        ),
        (
            Method::POST,
            "/api/inventory/SKU-0010/reservations",
            Some(json!({"quantity": -1})),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_quantity",
        ),
        (
            Method::POST,
            "/api/inventory/SKU-0010/reservations",
            Some(json!({"quantity": true})),
            StatusCode::BAD_REQUEST,
            "bad_json",
        ),
        (
            Method::POST,
            "/api/inventory/SKU-0040/reservations",
            Some(json!({"quantity": 1})),
            StatusCode::CONFLICT,
            "insufficient_stock",
        ),
        (
            Method::DELETE,
            "/api/inventory/reservations/abc",
            None,
            StatusCode::BAD_REQUEST,
            "bad_id",
        ),
        (
            Method::PUT,
            "/api/inventory/SKU-0010",
            None,
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
        ),
        (Method::GET, "/api/orders/1", None, StatusCode::NOT_FOUND, "not_found"),
        (
            Method::POST,
            "/api/inventory/SKU-0010/reservations",
            Some(json!({"quantity": 1, "pad": "x".repeat(70_000)})),
            StatusCode::PAYLOAD_TOO_LARGE,
            "body_too_large",
        ),
    ] {
        let (status, answer) = inv.call(method.clone(), path, body).await;
        assert_eq!((status, code(&answer)), (want_status, want_code), "{method} {path}");
    }
    let (status, health) = inv.get("/healthz").await;
    assert_eq!(
        (status, &health["service"]),
        (StatusCode::OK, &json!("inventory-service"))
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn error_rate_fails_about_that_fraction() {
    let inv = start().await;
    inv.faults.set(FaultSettings {
        error_rate: 0.5,
        ..FaultSettings::default()
    });
    let mut failed = 0;
    for _ in 0..200 {
        let (status, body) = inv.get("/api/inventory/SKU-0001").await;
        if status == StatusCode::SERVICE_UNAVAILABLE {
            assert_eq!(code(&body), "injected_fault");
            failed += 1;
        } else {
            assert_eq!(status, StatusCode::OK);
        }
    }
    assert!((50..=150).contains(&failed), "{failed} of 200 failed at error_rate 0.5");

    inv.faults.set(FaultSettings {
        error_rate: 1.0,
        ..FaultSettings::default()
    });
    let (status, _) = inv.get("/healthz").await;
    assert_eq!(status, StatusCode::OK, "healthz is exempt");
    let (status, _) = inv.get("/_faults").await;
    assert_eq!(status, StatusCode::OK, "/_faults is exempt");
    let (status, _) = inv.get("/api/inventory/SKU-0001").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
}

#[tokio::test(flavor = "multi_thread")]
async fn latency_delays_each_request() {
    let inv = start().await;
    let (status, view) = inv.post("/_faults", json!({"latency_ms": 200})).await;
    assert_eq!(status, StatusCode::OK, "{view}");
    assert_eq!(view["latency_ms"], 200);
    assert_eq!(inv.faults.get().latency, Duration::from_millis(200));
    let started = Instant::now();
    let (status, _) = inv.get("/api/inventory/SKU-0001").await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        started.elapsed() >= Duration::from_millis(200),
        "took {:?}",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn refuse_closes_the_port_and_reopens_it() {
    let inv = start().await;
    inv.faults.until_listening(true).await;
    assert_eq!(inv.get("/api/inventory/SKU-0001").await.0, StatusCode::OK);

    inv.faults.set(FaultSettings {
        refuse: true,
        ..FaultSettings::default()
    });
    inv.faults.until_listening(false).await;
    let err = inv
        .try_call(Method::GET, "/api/inventory/SKU-0001", None)
        .await
        .expect_err("refused");
    assert!(err.is_connect(), "{err:?}");

    inv.faults.reset();
    inv.faults.until_listening(true).await;
    assert_eq!(inv.get("/api/inventory/SKU-0001").await.0, StatusCode::OK);

    // Over HTTP the refusal is always timed, since nobody could reach /_faults to end it.
    let (status, _) = inv.post("/_faults", json!({"refuse_for_ms": 300})).await;
    assert_eq!(status, StatusCode::OK);
    inv.faults.until_listening(false).await;
    let err = inv.try_call(Method::GET, "/healthz", None).await.expect_err("refused");
    assert!(err.is_connect(), "{err:?}");
    tokio::time::timeout(Duration::from_secs(10), inv.faults.until_listening(true))
        .await
        .expect("listening again after refuse_for_ms");
    assert_eq!(inv.get("/api/inventory/SKU-0001").await.0, StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread")]
async fn drift_changes_a_field_until_reset() {
    let inv = start().await;
    let (_, honest) = inv.get("/api/inventory/SKU-0001").await;
    let (status, view) = inv
        .post(
            "/_faults",
            json!({"drift": {"field": "available", "value": 999}, "error_rate": 0.0}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(view["drift"], json!({"field": "available", "value": 999}));
    let (_, drifted) = inv.get("/api/inventory/SKU-0001").await;
    assert_eq!(drifted["available"], 999);
    assert_eq!(drifted["on_hand"], honest["on_hand"]);

    inv.faults.set(FaultSettings {
        drift: Some("error.code=\"changed\"".parse::<Drift>().expect("drift")),
        ..FaultSettings::default()
    });
    let (_, missing) = inv.get("/api/inventory/NOPE").await;
    assert_eq!(missing["error"]["code"], "changed", "dotted paths reach nested fields");

    let (status, view) = inv.post("/_faults", json!({"reset": true})).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        view,
        json!({"error_rate": 0.0, "latency_ms": 0, "refuse": false, "drift": null, "served_at": view["served_at"], "request_id": view["request_id"]})
    );
    let (_, back) = inv.get("/api/inventory/SKU-0001").await;
    assert_eq!(back["available"], honest["available"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn faults_endpoint_validates_input() {
    let inv = start().await;
    for (body, want_status, want_code) in [
        (
            json!({"error_rate": 1.5}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_fault",
        ),
        (
            json!({"refuse_for_ms": 3_600_000}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_fault",
        ),
        (json!({"latency_ms": -1}), StatusCode::BAD_REQUEST, "bad_json"),
        (json!({"bogus": 1}), StatusCode::BAD_REQUEST, "bad_json"),
    ] {
        let (status, answer) = inv.post("/_faults", body.clone()).await;
        assert_eq!((status, code(&answer)), (want_status, want_code), "{body}");
    }
    assert_eq!(
        inv.faults.get(),
        FaultSettings::default(),
        "rejected updates change nothing"
    );
}
