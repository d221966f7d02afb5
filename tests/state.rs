//! What a replica learns survives it: learned noise and recent mismatches are kept in
//! `state_dir/shadow.json` across a graceful restart; without a writable `state_dir` the proxy
//! still serves and says so once; a corrupt file is set aside and the proxy starts.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::proxy::{metric, Proxy};
use common::shop::{start_shop, Shop};
use serde_json::{json, Value};
use shop_kit::faults::{Drift, FaultSettings};

/// The shop behind a proxy whose `state_dir` is `state`, with these routes.
fn rules(shop: &Shop, state: &Path, routes: &str) -> String {
    format!(
        "state_dir: \"{}\"\nlegacy: monolith\nupstreams:\n  monolith: {{ url: \"http://{}\" }}\n  inventory: {{ url: \"http://{}\", timeouts: {{ connect: 200ms, response: 1s }} }}\n  orders: {{ url: \"http://{}\", timeouts: {{ connect: 200ms, response: 1s }} }}\nroutes:\n{routes}",
        state.display(),
        shop.monolith,
        shop.inventory,
        shop.orders
    )
}

/// Shadow results of `route` (match, mismatch, error, skipped) once there are `n`.
async fn settled(proxy: &Proxy, route: &str, n: u64) -> [u64; 4] {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let m = proxy.metrics().await;
        let r = ["match", "mismatch", "error", "skipped"].map(|r| {
            metric(
                &m,
                &format!("strangler_shadow_total{{result=\"{r}\",route=\"{route}\"}}"),
            )
        });
        if r.iter().sum::<u64>() >= n {
            return r;
        }
        assert!(Instant::now() < deadline, "{route}: only {r:?} of {n} shadow results");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn get_ok(client: &reqwest::Client, proxy: &Proxy, path: &str) {
    let r = client.get(proxy.url(path)).send().await.expect("request");
    assert_eq!(r.status(), 200, "GET {path}");
}

fn learned_noise(routes: &Value, name: &str) -> Value {
    routes["routes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == name)
        .unwrap_or_else(|| panic!("no route {name}: {routes}"))["shadow"]["learned_noise"]
        .clone()
}

/// (request id, path, differences) of each mismatch shown for `route`, newest first.
async fn mismatches(proxy: &Proxy, route: &str) -> Vec<(Value, Value, Value)> {
    let v = proxy
        .admin_json(&format!("/api/mismatches?route={route}&limit=100"))
        .await;
    v["mismatches"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| (m["request_id"].clone(), m["path"].clone(), m["differences"].clone()))
        .collect()
}

async fn stop(mut proxy: Proxy) {
    proxy.stop_gracefully().await;
}

fn saved(state: &Path) -> Value {
    let text = std::fs::read_to_string(state.join("shadow.json")).expect("shadow.json after shutdown");
    serde_json::from_str(&text).expect("shadow.json is JSON")
}

#[tokio::test(flavor = "multi_thread")]
async fn learned_noise_and_mismatches_survive_a_graceful_restart() {
    let shop = start_shop().await;
    let state = tempfile::tempdir().unwrap();
    let learning = "{ noise: { sample: 1.0 } }";
    let before = rules(
        &shop,
        state.path(),
        &format!(
            "  - {{ name: orders-read, match: {{ path: \"/api/orders/{{id}}\", methods: [GET] }}, mode: shadow, service: orders, shadow: {learning} }}\n\
             \x20 - {{ name: user-orders, match: {{ path: \"/api/users/{{id}}/orders\", methods: [GET] }}, mode: shadow, service: orders, shadow: {learning} }}\n\
             \x20 - {{ name: stock, match: {{ prefix: /api/inventory, methods: [GET] }}, mode: shadow, service: inventory, shadow: {learning} }}\n"
        ),
    );
    // The orders service drifts: every copy of an order mismatches on `total_cents`, and
    // `served_at` (different on every answer) is learned from the monolith asked twice.
    shop.orders_faults.set(FaultSettings {
        drift: Some(Drift {
            field: "total_cents".into(),
            value: json!(-1),
        }),
        ..Default::default()
    });
    let proxy = Proxy::start(&before).await;
    let client = reqwest::Client::new();
    for id in 1..=5 {
        get_ok(&client, &proxy, &format!("/api/orders/{id}")).await;
    }
    get_ok(&client, &proxy, "/api/users/1/orders").await;
    get_ok(&client, &proxy, "/api/inventory/SKU-0007").await;
    assert_eq!(settled(&proxy, "orders-read", 5).await, [0, 5, 0, 0]);
    settled(&proxy, "user-orders", 1).await;
    settled(&proxy, "stock", 1).await;
    let routes = proxy.admin_json("/api/routes").await;
    assert_eq!(learned_noise(&routes, "orders-read"), json!(["$.served_at"]));
    assert_eq!(learned_noise(&routes, "user-orders"), json!(["$.served_at"]));
    let samples = mismatches(&proxy, "orders-read").await;
    assert_eq!(samples.len(), 5, "{samples:?}");
    assert!(samples
        .iter()
        .all(|(_, _, d)| d.as_array().unwrap().len() == 1 && d[0]["path"] == "$.total_cents"));
    stop(proxy).await;

    // The restart: orders-read no longer learns noise (so only what was loaded can ignore
    // `served_at`), user-orders now compares another service, and stock is gone.
    let after = rules(
        &shop,
        state.path(),
        "  - { name: orders-read, match: { path: \"/api/orders/{id}\", methods: [GET] }, mode: shadow, service: orders, shadow: {} }\n\
         \x20 - { name: user-orders, match: { path: \"/api/users/{id}/orders\", methods: [GET] }, mode: shadow, service: inventory, shadow: {} }\n",
    );
    let proxy = Proxy::start(&after).await;
    assert_eq!(
        mismatches(&proxy, "orders-read").await,
        samples,
        "the samples from before the restart, before any traffic"
    );
    let routes = proxy.admin_json("/api/routes").await;
    assert_eq!(learned_noise(&routes, "orders-read"), json!(["$.served_at"]));
    assert_eq!(
        learned_noise(&routes, "user-orders"),
        json!([]),
        "another service: starts fresh"
    );
    assert!(mismatches(&proxy, "user-orders").await.is_empty());

    // No drift now: the answers differ only in `served_at`, which the loaded noise ignores.
    shop.orders_faults.reset();
    get_ok(&client, &proxy, "/api/orders/7").await;
    assert_eq!(
        settled(&proxy, "orders-read", 1).await,
        [1, 0, 0, 0],
        "the learned noise is in force right after the restart"
    );
    stop(proxy).await;
    let file = saved(state.path());
    assert_eq!(file["version"], 1, "{file}");
    let names: Vec<&String> = file["routes"].as_object().unwrap().keys().collect();
    assert_eq!(names, ["orders-read", "user-orders"], "a removed route is dropped");
    assert_eq!(file["routes"]["user-orders"]["service"], "inventory");
    assert_eq!(file["routes"]["orders-read"]["noise"], json!([["served_at"]]));
    assert_eq!(file["routes"]["orders-read"]["mismatches"].as_array().unwrap().len(), 5);
}

const SHADOWED: &str = "  - { name: orders-read, match: { path: \"/api/orders/{id}\", methods: [GET] }, mode: shadow, service: orders, shadow: { noise: { sample: 1.0 } } }\n";

#[tokio::test(flavor = "multi_thread")]
async fn without_a_writable_state_dir_the_proxy_serves_and_says_so_once() {
    let shop = start_shop().await;
    let tmp = tempfile::tempdir().unwrap();
    // A file where the directory should be.
    let state = tmp.path().join("state");
    std::fs::write(&state, "not a directory").unwrap();
    shop.orders_faults.set(FaultSettings {
        drift: Some(Drift {
            field: "total_cents".into(),
            value: json!(-1),
        }),
        ..Default::default()
    });
    let proxy = Proxy::start(&rules(&shop, &state, SHADOWED)).await;
    let client = reqwest::Client::new();
    for id in 1..=3 {
        get_ok(&client, &proxy, &format!("/api/orders/{id}")).await;
    }
    assert_eq!(settled(&proxy, "orders-read", 3).await, [0, 3, 0, 0]);
    assert_eq!(mismatches(&proxy, "orders-read").await.len(), 3, "kept in memory");
    let warning = format!("state_dir {} is not writable (", state.display());
    let rest = "): learned noise, mismatch samples, the endpoint map and the autopilot journal live in memory only; set state_dir to a writable directory to keep them across restarts";
    let log = proxy.log_with(&[&warning]).await;
    let said = |log: &str| log.lines().filter(|l| l.contains(&warning) && l.contains(rest)).count();
    assert_eq!(said(&log), 1, "log:\n{log}");
    // Nothing else (the map, the autopilot) says it again in its own words.
    let any = |log: &str| log.lines().filter(|l| l.contains("is not writable")).count();
    assert_eq!(any(&log), 1, "log:\n{log}");
    let mut proxy = proxy;
    proxy.signal("TERM");
    proxy
        .wait_exit(Duration::from_secs(20))
        .await
        .expect("the proxy exits on SIGTERM");
    let log = proxy.log();
    assert_eq!(said(&log), 1, "and not again at shutdown; log:\n{log}");
    assert!(!log.contains("not saved"), "nothing tried to save; log:\n{log}");
    assert_eq!(std::fs::read_to_string(&state).unwrap(), "not a directory");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_corrupt_shadow_file_is_set_aside_and_the_proxy_starts() {
    let shop = start_shop().await;
    let state = tempfile::tempdir().unwrap();
    let corrupt = r#"{"version": 1, "routes": {"orders-read": {"legacy": "monolith", "noi"#;
    std::fs::write(state.path().join("shadow.json"), corrupt).unwrap();
    let proxy = Proxy::start(&rules(&shop, state.path(), SHADOWED)).await;
    let client = reqwest::Client::new();
    get_ok(&client, &proxy, "/api/orders/1").await;
    assert_eq!(settled(&proxy, "orders-read", 1).await, [1, 0, 0, 0]);
    let aside = state.path().join("shadow.json.corrupt");
    assert_eq!(
        std::fs::read_to_string(&aside).unwrap(),
        corrupt,
        "moved aside, byte for byte"
    );
    let log = proxy.log_with(&["is not learned shadow state"]).await;
    assert!(
        log.contains(&format!("moved aside to {}", aside.display())),
        "log:\n{log}"
    );
    stop(proxy).await;
    let file = saved(state.path());
    assert_eq!(file["routes"]["orders-read"]["noise"], json!([["served_at"]]), "{file}");
    assert_eq!(std::fs::read_to_string(&aside).unwrap(), corrupt, "still there");
}
