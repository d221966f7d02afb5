//! Shadow traffic end to end against the bundled shop: the monolith answers, the service gets a
//! copy, the proxy compares the two answers, learns noise, and shows what differs.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::proxy::{metric, Proxy};
use common::shop::{start_shop, Shop};
use serde_json::{json, Value};
use shop_kit::faults::{Drift, FaultSettings};

fn rules(shop: &Shop, extra_upstreams: &str, routes: &str) -> String {
    format!(
        "legacy: monolith\nupstreams:\n  monolith: {{ url: \"http://{}\" }}\n  inventory: {{ url: \"http://{}\", timeouts: {{ connect: 200ms, response: 1s }} }}\n  orders: {{ url: \"http://{}\", timeouts: {{ connect: 200ms, response: 1s }} }}\n{extra_upstreams}routes:\n{routes}",
        shop.monolith, shop.inventory, shop.orders
    )
}

fn shadow_routes(shadow: &str) -> String {
    format!(
        "  - {{ name: orders-read, match: {{ path: \"/api/orders/{{id}}\", methods: [GET] }}, mode: shadow, service: orders, shadow: {shadow} }}\n\
         \x20 - {{ name: user-orders, match: {{ path: \"/api/users/{{id}}/orders\", methods: [GET] }}, mode: shadow, service: orders, shadow: {shadow} }}\n\
         \x20 - {{ name: stock, match: {{ prefix: /api/inventory, methods: [GET] }}, mode: shadow, service: inventory, shadow: {shadow} }}\n"
    )
}

fn results(m: &str, route: &str) -> [u64; 4] {
    ["match", "mismatch", "error", "skipped"].map(|r| {
        metric(
            m,
            &format!("strangler_shadow_total{{result=\"{r}\",route=\"{route}\"}}"),
        )
    })
}

/// Wait until `route` has `n` shadow results (comparisons run after the response).
async fn settled(proxy: &Proxy, route: &str, n: u64) -> [u64; 4] {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let r = results(&proxy.metrics().await, route);
        if r.iter().sum::<u64>() >= n {
            return r;
        }
        assert!(Instant::now() < deadline, "{route}: only {r:?} of {n} shadow results");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn get(client: &reqwest::Client, url: String) -> (u16, String, Value) {
    let r = client.get(url).send().await.expect("request");
    let up = r.headers()["x-strangler-upstream"].to_str().unwrap().to_string();
    (r.status().as_u16(), up, r.json().await.unwrap_or(Value::Null))
}

#[tokio::test(flavor = "multi_thread")]
async fn healthy_services_match_on_every_shadowed_endpoint() {
    let shop = start_shop().await;
    let proxy = Proxy::start(&rules(&shop, "", &shadow_routes("{ ignore: [\"$.served_at\"] }"))).await;
    let client = reqwest::Client::new();
    for id in 1..=30 {
        let (status, up, body) = get(&client, proxy.url(&format!("/api/orders/{id}"))).await;
        assert_eq!(
            (status, up.as_str()),
            (200, "monolith"),
            "the client gets the monolith's answer"
        );
        assert_eq!(body["id"], id);
    }
    for id in 1..=10 {
        get(&client, proxy.url(&format!("/api/users/{id}/orders"))).await;
        get(&client, proxy.url(&format!("/api/inventory/SKU-{:04}", id * 7))).await;
    }
    get(&client, proxy.url("/api/orders/99999")).await; // a 404 on both sides matches too
    assert_eq!(settled(&proxy, "orders-read", 31).await, [31, 0, 0, 0]);
    assert_eq!(settled(&proxy, "user-orders", 10).await, [10, 0, 0, 0]);
    assert_eq!(settled(&proxy, "stock", 10).await, [10, 0, 0, 0]);
    let m = proxy.metrics().await;
    assert!(
        m.contains("strangler_shadow_latency_seconds_count{route=\"stock\",side=\"new\"} 10"),
        "{m}"
    );
    assert!(
        m.contains("strangler_shadow_latency_seconds_count{route=\"stock\",side=\"legacy\"} 10"),
        "{m}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn noise_is_learned_when_nothing_is_ignored() {
    let shop = start_shop().await;
    let proxy = Proxy::start(&rules(&shop, "", &shadow_routes("{ noise: { sample: 1.0 } }"))).await;
    let client = reqwest::Client::new();
    for id in 1..=20 {
        get(&client, proxy.url(&format!("/api/orders/{id}"))).await;
    }
    let r = settled(&proxy, "orders-read", 20).await;
    assert_eq!(
        r,
        [20, 0, 0, 0],
        "served_at differs on every call, and was learned before it could mismatch"
    );
    let routes: Value = proxy.admin_json("/api/routes").await;
    let route = routes["routes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == "orders-read")
        .unwrap();
    assert_eq!(route["shadow"]["learned_noise"], json!(["$.served_at"]), "{route}");
}

#[tokio::test(flavor = "multi_thread")]
async fn drift_is_caught_with_exactly_the_drifted_path() {
    let shop = start_shop().await;
    let proxy = Proxy::start(&rules(&shop, "", &shadow_routes("{ ignore: [\"$.served_at\"] }"))).await;
    shop.orders_faults.set(FaultSettings {
        drift: Some(Drift {
            field: "total_cents".into(),
            value: json!(-1),
        }),
        ..Default::default()
    });
    let client = reqwest::Client::new();
    let (_, _, legacy) = get(&client, proxy.url("/api/orders/5")).await;
    assert_eq!(settled(&proxy, "orders-read", 1).await, [0, 1, 0, 0]);

    let m = proxy.metrics().await;
    assert_eq!(
        metric(
            &m,
            "strangler_shadow_mismatch_paths_total{path=\"$.total_cents\",route=\"orders-read\"}"
        ),
        1,
        "{m}"
    );
    let v: Value = proxy.admin_json("/api/mismatches?route=orders-read&limit=5").await;
    let entries = v["mismatches"].as_array().unwrap();
    assert_eq!(entries.len(), 1, "{v}");
    let e = &entries[0];
    assert_eq!(e["method"], "GET");
    assert_eq!(e["path"], "/api/orders/5");
    assert_eq!(e["status"], json!({"legacy": 200, "new": 200}));
    assert_eq!(
        e["differences"],
        json!([{"path": "$.total_cents", "legacy": legacy["total_cents"], "new": -1}])
    );
    assert_eq!(
        e["patch"],
        json!([{"op": "replace", "path": "/total_cents", "value": -1}])
    );
    assert_eq!(e["request_id"].as_str().unwrap().len(), 32);
    assert!(e["legacy_body"].as_str().unwrap().contains("\"total_cents\""));

    let r = reqwest::get(proxy.admin_url("/api/mismatches?route=nope"))
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_slow_or_dead_shadow_changes_nothing_for_the_client() {
    let shop = start_shop().await;
    let text = rules(&shop, "", &shadow_routes("{ ignore: [\"$.served_at\"] }"))
        .replace("routes:\n", "shadow_max_in_flight: 8\nroutes:\n");
    let proxy = Proxy::start(&text).await;
    let client = reqwest::Client::new();

    // Dead: refused connections are errors, the client still gets the monolith's answer.
    shop.orders_faults.set(FaultSettings {
        refuse: true,
        ..Default::default()
    });
    shop.orders_faults.until_listening(false).await;
    for id in 1..=5 {
        let (status, up, _) = get(&client, proxy.url(&format!("/api/orders/{id}"))).await;
        assert_eq!((status, up.as_str()), (200, "monolith"));
    }
    assert_eq!(settled(&proxy, "orders-read", 5).await, [0, 0, 5, 0]);

    // Slow (5 s, past its 1 s timeout): copies time out; past 8 in flight they are skipped.
    shop.orders_faults.set(FaultSettings {
        latency: Duration::from_secs(5),
        ..Default::default()
    });
    shop.orders_faults.until_listening(true).await;
    let calls: Vec<_> = (1..=20)
        .map(|id| {
            let (client, url) = (client.clone(), proxy.url(&format!("/api/orders/{id}")));
            tokio::spawn(async move { get(&client, url).await })
        })
        .collect();
    for c in calls {
        let (status, up, _) = c.await.unwrap();
        assert_eq!((status, up.as_str()), (200, "monolith"));
    }
    let [_, _, errors, skipped] = settled(&proxy, "orders-read", 25).await;
    assert_eq!(errors + skipped, 25, "timeouts and skips only");
    assert!(skipped >= 1, "the in-flight cap held");
    let m = proxy.metrics().await;
    assert_eq!(
        metric(
            &m,
            "strangler_shadow_skipped_total{reason=\"overloaded\",route=\"orders-read\"}"
        ),
        skipped,
        "{m}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn memory_stays_bounded_over_10000_shadowed_requests() {
    let shop = start_shop().await;
    let proxy = Proxy::start(&rules(&shop, "", &shadow_routes("{ ignore: [\"$.served_at\"] }"))).await;
    shop.inventory_faults.set(FaultSettings {
        drift: Some(Drift {
            field: "available".into(),
            value: json!(0),
        }),
        ..Default::default()
    });
    let rss = |m: &str| metric(m, "process_resident_memory_bytes");
    let client = reqwest::Client::new();
    let url = proxy.url("/api/inventory/SKU-0001");
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let (client, url) = (client.clone(), url.clone());
        tasks.push(tokio::spawn(async move {
            for _ in 0..1250 {
                assert_eq!(client.get(&url).send().await.unwrap().status(), 200);
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let r = settled(&proxy, "stock", 10_000).await;
    assert_eq!(
        r[1] + r[3],
        10_000,
        "every copy mismatched (drift) or was skipped at the cap: {r:?}"
    );
    let m = proxy.metrics().await;
    let v: Value = proxy.admin_json("/api/mismatches?route=stock&limit=1000").await;
    assert_eq!(
        v["mismatches"].as_array().unwrap().len(),
        100,
        "the ring keeps 100 per route"
    );
    assert!(rss(&m) < 256 << 20, "resident memory {} MiB", rss(&m) >> 20);
}

#[tokio::test(flavor = "multi_thread")]
async fn writes_are_copied_only_when_listed_and_carry_the_shadow_header() {
    let shop = start_shop().await;
    let echo: SocketAddr = common::echo::start("echo").await;
    // The more specific rule first: among rules with the same path, the first that matches wins.
    let routes = "  - { name: create-listed, match: { path: /api/orders, methods: [POST], headers: { x-listed: present } }, mode: shadow, service: echo, shadow: { methods: [POST], max_body: 1KiB } }\n\
                  \x20 - { name: create, match: { path: /api/orders, methods: [POST] }, mode: shadow, service: orders }\n";
    let extra = format!("  echo: {{ url: \"http://{echo}\" }}\n");
    let proxy = Proxy::start(&rules(&shop, &extra, routes)).await;
    let client = reqwest::Client::new();
    let order = json!({"user_id": 2, "items": [{"sku": "SKU-0009", "quantity": 1}]});

    let r = client.post(proxy.url("/api/orders")).json(&order).send().await.unwrap();
    assert_eq!(r.status(), 201);
    assert_eq!(settled(&proxy, "create", 1).await, [0, 0, 0, 1]);
    let m = proxy.metrics().await;
    assert_eq!(
        metric(&m, "strangler_shadow_skipped_total{reason=\"method\",route=\"create\"}"),
        1
    );
    assert_eq!(shop.orders_faults.requests(), 0, "the service never saw the POST");

    let r = client
        .post(proxy.url("/api/orders"))
        .header("x-listed", "1")
        .json(&order)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    assert_eq!(
        settled(&proxy, "create-listed", 1).await,
        [0, 1, 0, 0],
        "the echo answers differently"
    );
    let v: Value = proxy.admin_json("/api/mismatches?route=create-listed").await;
    let seen: Value = serde_json::from_str(v["mismatches"][0]["new_body"].as_str().unwrap()).unwrap();
    assert_eq!(seen["method"], "POST");
    assert_eq!(seen["headers"]["x-strangler-shadow"], json!(["1"]));
    assert_eq!(seen["path"], "/api/orders");

    // Past max_body (1 KiB) the copy is skipped and counted.
    let big = json!({"user_id": 2, "items": [{"sku": "SKU-0009", "quantity": 1}], "note": "x".repeat(4096)});
    client
        .post(proxy.url("/api/orders"))
        .header("x-listed", "1")
        .json(&big)
        .send()
        .await
        .unwrap();
    let m = proxy.metrics().await;
    assert_eq!(
        metric(
            &m,
            "strangler_shadow_skipped_total{reason=\"body_too_large\",route=\"create-listed\"}"
        ),
        1,
        "{m}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn secrets_never_reach_the_mismatch_log() {
    let shop = start_shop().await;
    let proxy = Proxy::start(&rules(
        &shop,
        "",
        &shadow_routes("{ ignore: [\"$.served_at\"], redact: [x-api-key] }"),
    ))
    .await;
    shop.orders_faults.set(FaultSettings {
        drift: Some(Drift {
            field: "status".into(),
            value: json!("lost"),
        }),
        ..Default::default()
    });
    let client = reqwest::Client::new();
    client
        .get(proxy.url("/api/orders/3"))
        .header("authorization", "Bearer secret-token")
        .header("cookie", "session=secret-cookie")
        .header("x-api-key", "secret-key")
        .header("x-visible", "fine")
        .send()
        .await
        .unwrap();
    settled(&proxy, "orders-read", 1).await;
    let text = reqwest::get(proxy.admin_url("/api/mismatches"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(text.contains("\"x-visible\":\"fine\""), "{text}");
    assert!(!text.contains("secret"), "a secret leaked: {text}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_canary_route_can_shadow_its_legacy_share() {
    let shop = start_shop().await;
    let routes = "  - { name: stock, match: { prefix: /api/inventory }, mode: canary, service: inventory, canary: { percent: 0 }, shadow: { ignore: [\"$.served_at\"] } }\n";
    let proxy = Proxy::start(&rules(&shop, "", routes)).await;
    let client = reqwest::Client::new();
    for _ in 0..5 {
        let (status, up, _) = get(&client, proxy.url("/api/inventory/SKU-0004")).await;
        assert_eq!((status, up.as_str()), (200, "monolith"));
    }
    assert_eq!(settled(&proxy, "stock", 5).await, [5, 0, 0, 0]);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failing_shadow_service_opens_its_circuit_and_copies_wait() {
    let shop = start_shop().await;
    let text = rules(&shop, "", &shadow_routes("{ ignore: [\"$.served_at\"] }")).replace(
        "  orders: { url:",
        "  orders: { circuit_breaker: { min_requests: 4, failure_ratio: 0.5, open_for: 60s }, url:",
    );
    let proxy = Proxy::start(&text).await;
    shop.orders_faults.set(FaultSettings {
        error_rate: 1.0,
        ..Default::default()
    });
    let client = reqwest::Client::new();
    for id in 1..=4 {
        get(&client, proxy.url(&format!("/api/orders/{id}"))).await;
    }
    settled(&proxy, "orders-read", 4).await;
    let reached = shop.orders_faults.requests();
    for id in 5..=14 {
        let (status, up, _) = get(&client, proxy.url(&format!("/api/orders/{id}"))).await;
        assert_eq!((status, up.as_str()), (200, "monolith"));
    }
    settled(&proxy, "orders-read", 14).await;
    let m = proxy.metrics().await;
    assert_eq!(
        metric(
            &m,
            "strangler_shadow_skipped_total{reason=\"circuit_open\",route=\"orders-read\"}"
        ),
        10,
        "{m}"
    );
    assert_eq!(
        shop.orders_faults.requests(),
        reached,
        "no copy reached the service while its circuit was open"
    );
    assert!(m.contains("strangler_circuit_state{upstream=\"orders\"} 2"), "{m}");
}

#[tokio::test(flavor = "multi_thread")]
async fn copies_carry_credentials_unless_the_route_says_not_to() {
    let shop = start_shop().await;
    let echo: SocketAddr = common::echo::start("echo").await;
    let routes = "  - { name: trusted, match: { path: \"/api/orders/{id}\", methods: [GET] }, mode: shadow, service: echo }\n\
                  \x20 - { name: untrusted, match: { prefix: /api/catalog, methods: [GET] }, mode: shadow, service: echo, shadow: { forward_credentials: false } }\n";
    let extra = format!("  echo: {{ url: \"http://{echo}\" }}\n");
    let proxy = Proxy::start(&rules(&shop, &extra, routes)).await;
    let client = reqwest::Client::new();
    for path in ["/api/orders/3", "/api/catalog/products/1"] {
        let r = client
            .get(proxy.url(path))
            .header("authorization", "Bearer secret-token")
            .header("cookie", "session=secret-cookie")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{path}");
    }
    // The echo answers differently from the monolith, so each copy is a stored mismatch whose
    // new body is what the echo received.
    for (route, forwarded) in [("trusted", true), ("untrusted", false)] {
        assert_eq!(settled(&proxy, route, 1).await, [0, 1, 0, 0], "{route}");
        let text = reqwest::get(proxy.admin_url(&format!("/api/mismatches?route={route}")))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert!(!text.contains("secret"), "{route}: a secret was stored: {text}");
        let v: Value = serde_json::from_str(&text).unwrap();
        let seen: Value = serde_json::from_str(v["mismatches"][0]["new_body"].as_str().unwrap()).unwrap();
        for h in ["authorization", "cookie"] {
            assert_eq!(
                seen["headers"].get(h).is_some(),
                forwarded,
                "{route}: {h} on the copy: {seen}"
            );
        }
        assert_eq!(seen["headers"]["x-strangler-shadow"], json!(["1"]), "{route}");
    }
}

/// An HTTP/2 client sends `:authority`, not `host`: its copy still carries the host. A POST body
/// streamed without a content-length reaches the service whole, with one.
#[tokio::test(flavor = "multi_thread")]
async fn an_http2_clients_copy_carries_its_host_and_body() {
    let shop = start_shop().await;
    let echo: SocketAddr = common::echo::start("echo").await;
    let routes = "  - { name: h2, match: { prefix: /api/orders }, mode: shadow, service: echo, shadow: { methods: [GET, POST] } }\n";
    let extra = format!("  echo: {{ url: \"http://{echo}\" }}\n");
    let proxy = Proxy::start(&rules(&shop, &extra, routes)).await;
    let client = reqwest::Client::builder().http2_prior_knowledge().build().unwrap();
    let r = client.get(proxy.url("/api/orders/3")).send().await.unwrap();
    assert_eq!((r.version(), r.status().as_u16()), (reqwest::Version::HTTP_2, 200));
    // Streamed: HTTP/2 sends no content-length, only the end of the stream says the body ended.
    let body = r#"{"user_id":1,"items":[{"sku":"SKU-0001","qty":1}]}"#;
    let parts: Vec<Result<&'static str, std::io::Error>> = vec![Ok(&body[..10]), Ok(&body[10..])];
    let r = client
        .post(proxy.url("/api/orders"))
        .body(reqwest::Body::wrap_stream(futures_util::stream::iter(parts)))
        .send()
        .await
        .unwrap();
    assert!(r.status().as_u16() < 500, "{}", r.status());
    // The echo answers differently from the monolith: each copy is a stored mismatch whose new
    // body is what the echo received.
    let r = settled(&proxy, "h2", 2).await;
    assert_eq!(r[1], 2, "{r:?}\n{}\n{}", proxy.metrics().await, proxy.log());
    let v: Value = proxy.admin_json("/api/mismatches?route=h2").await;
    let host = proxy
        .url("")
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .to_string();
    for m in v["mismatches"].as_array().unwrap() {
        let seen: Value = serde_json::from_str(m["new_body"].as_str().unwrap()).unwrap();
        assert_eq!(seen["headers"]["host"], json!([host]), "{seen}");
        if seen["method"] == "POST" {
            assert_eq!(
                seen["headers"]["content-length"],
                json!([body.len().to_string()]),
                "{seen}"
            );
        }
    }
}

/// The proxy's sockets whose remote end is `addr`, in any state (open, or closed and waiting),
/// from the kernel's tables: each one is a connection the proxy opened to it.
fn connections_to(addr: SocketAddr) -> usize {
    let port = format!(":{:04X}", addr.port());
    let table = std::fs::read_to_string("/proc/net/tcp").unwrap_or_default()
        + &std::fs::read_to_string("/proc/net/tcp6").unwrap_or_default();
    table
        .lines()
        .filter(|l| {
            l.split_whitespace()
                .nth(2)
                .is_some_and(|remote| remote.ends_with(&port))
        })
        .count()
}

#[tokio::test(flavor = "multi_thread")]
async fn copies_reuse_their_connections_to_the_service() {
    let shop = start_shop().await;
    let proxy = Proxy::start(&rules(&shop, "", &shadow_routes("{ ignore: [\"$.served_at\"] }"))).await;
    let client = reqwest::Client::new();
    let before = connections_to(shop.inventory);
    for id in 1..=60 {
        get(&client, proxy.url(&format!("/api/inventory/SKU-{:04}", id))).await;
    }
    assert_eq!(settled(&proxy, "stock", 60).await, [60, 0, 0, 0]);
    // Kept alive and reused: a few per worker thread (a copy can still be reading when the next
    // one starts), plus the health probes. Not one per copy.
    let opened = connections_to(shop.inventory).saturating_sub(before);
    eprintln!("60 copies opened {opened} connections to the service");
    assert!(opened <= 20, "60 copies opened {opened} connections to the service");
}

#[tokio::test(flavor = "multi_thread")]
async fn large_answers_are_compared_off_the_worker_and_still_match() {
    let shop = start_shop().await;
    // The monolith shadowed onto itself (a second upstream name, same address): answers that are
    // equal apart from the volatile fields, and large enough together to leave the worker thread.
    let extra = format!("  monolith-copy: {{ url: \"http://{}\" }}\n", shop.monolith);
    let routes = "  - { name: catalog, match: { prefix: /api/catalog, methods: [GET] }, mode: shadow, service: monolith-copy, shadow: { ignore: [\"$.served_at\", \"$.request_id\"] } }\n";
    let proxy = Proxy::start(&rules(&shop, &extra, routes)).await;
    let client = reqwest::Client::new();
    for page in 1..=3 {
        let r = client
            .get(proxy.url(&format!("/api/catalog/products?page={page}&per_page=100")))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let body = r.bytes().await.unwrap();
        if page == 1 {
            assert!(
                2 * body.len() > strangler::shadow::INLINE_COMPARE,
                "the answers must be large enough to be compared on the shadow thread: {} bytes",
                body.len()
            );
        }
    }
    assert_eq!(settled(&proxy, "catalog", 3).await, [3, 0, 0, 0]);
}
