//! Fallback to the monolith and the resilience around it, end to end: the real proxy in front of
//! the real monolith and services, broken with the services' own fault knobs.

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::proxy::{answer, metric, Proxy};
use common::shop::{start_shop, Shop};
use serde_json::{json, Value};
use shop_kit::faults::FaultSettings;

/// A rules file for the shop: `inv` and `ord` are extra YAML for those upstreams.
fn rules(shop: &Shop, inv: &str, ord: &str, routes: &str) -> String {
    format!(
        "legacy: monolith\nupstreams:\n  monolith: {{ url: \"http://{}\" }}\n  inventory:\n    url: \"http://{}\"\n{inv}  orders:\n    url: \"http://{}\"\n{ord}routes:\n{routes}",
        shop.monolith, shop.inventory, shop.orders
    )
}

const STOCK: &str =
    "  - { name: stock, match: { prefix: /api/inventory, methods: [GET, PUT] }, mode: migrated, service: inventory }\n";
const NO_BREAKER: &str = "    circuit_breaker: { enabled: false }\n    timeouts: { connect: 300ms, response: 300ms }\n";

fn orders_in(db: &std::path::Path) -> i64 {
    let c = rusqlite::Connection::open(db).unwrap();
    c.query_row("SELECT COUNT(*) FROM orders", [], |r| r.get(0)).unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn each_fallback_reason_serves_the_monolith() {
    let shop = start_shop().await;
    let proxy = Proxy::start(&rules(&shop, NO_BREAKER, "", STOCK)).await;
    let client = reqwest::Client::new();
    let get = || client.get(proxy.url("/api/inventory/SKU-0001"));

    // Healthy: the service answers.
    let a = answer(get()).await;
    assert_eq!(
        (a.status, a.upstream.as_str(), a.fallback.as_deref()),
        (200, "inventory", None)
    );

    // A 5xx from the service.
    shop.inventory_faults.set(FaultSettings {
        error_rate: 1.0,
        ..Default::default()
    });
    let a = answer(get()).await;
    assert_eq!(
        (a.status, a.upstream.as_str(), a.fallback.as_deref()),
        (200, "monolith", Some("status_5xx"))
    );
    assert_eq!(a.body["sku"], "SKU-0001");

    // Latency past the 300 ms response timeout.
    shop.inventory_faults.set(FaultSettings {
        latency: Duration::from_millis(1500),
        ..Default::default()
    });
    let a = answer(get()).await;
    assert_eq!(
        (a.status, a.upstream.as_str(), a.fallback.as_deref()),
        (200, "monolith", Some("timeout"))
    );

    // Not listening at all.
    shop.inventory_faults.set(FaultSettings {
        refuse: true,
        ..Default::default()
    });
    shop.inventory_faults.until_listening(false).await;
    let fresh = reqwest::Client::new();
    let a = answer(fresh.get(proxy.url("/api/inventory/SKU-0001"))).await;
    assert_eq!(
        (a.status, a.upstream.as_str(), a.fallback.as_deref()),
        (200, "monolith", Some("connect_error"))
    );

    let m = proxy.metrics().await;
    for reason in ["status_5xx", "timeout", "connect_error"] {
        assert_eq!(
            metric(
                &m,
                &format!("strangler_fallbacks_total{{reason=\"{reason}\",route=\"stock\"}}")
            ),
            1,
            "{reason}\n{m}"
        );
    }
}

/// A service that takes the request, starts answering, and resets the connection.
async fn resetting_service() -> SocketAddr {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let _ = s.read(&mut buf).await;
                let _ = s.write_all(b"HTTP/1.1 200 OK\r\nContent-Le").await;
                let _ = s.set_zero_linger();
                drop(s);
            });
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread")]
async fn a_reset_mid_response_falls_back() {
    let shop = start_shop().await;
    let broken = resetting_service().await;
    let text = format!(
        "legacy: monolith\nupstreams:\n  monolith: {{ url: \"http://{}\" }}\n  flaky: {{ url: \"http://{broken}\", circuit_breaker: {{ enabled: false }} }}\nroutes:\n  - {{ name: stock, match: {{ prefix: /api/inventory }}, mode: migrated, service: flaky }}\n",
        shop.monolith
    );
    let proxy = Proxy::start(&text).await;
    let client = reqwest::Client::new();
    let a = answer(client.get(proxy.url("/api/inventory/SKU-0002"))).await;
    assert_eq!(
        (a.status, a.upstream.as_str(), a.fallback.as_deref()),
        (200, "monolith", Some("reset"))
    );
    assert_eq!(a.body["sku"], "SKU-0002");
}

#[tokio::test(flavor = "multi_thread")]
async fn retries_go_to_the_service_before_the_fallback() {
    let shop = start_shop().await;
    let inv =
        "    circuit_breaker: { enabled: false }\n    retries: { attempts: 3, backoff: { base: 5ms, max: 20ms } }\n";
    let proxy = Proxy::start(&rules(&shop, inv, "", STOCK)).await;
    shop.inventory_faults.set(FaultSettings {
        error_rate: 1.0,
        ..Default::default()
    });
    let client = reqwest::Client::new();
    let a = answer(client.get(proxy.url("/api/inventory/SKU-0001"))).await;
    assert_eq!((a.status, a.fallback.as_deref()), (200, Some("status_5xx")));
    assert_eq!(
        shop.inventory_faults.requests(),
        3,
        "three tries of the service, then the monolith"
    );
    let m = proxy.metrics().await;
    assert_eq!(metric(&m, "strangler_retries_total{route=\"stock\"}"), 2, "{m}");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_service_dies_under_load_and_no_client_sees_an_error() {
    let shop = start_shop().await;
    let inv = "    timeouts: { connect: 300ms, response: 2s }\n";
    let proxy = Arc::new(Proxy::start(&rules(&shop, inv, "", STOCK)).await);
    let stop = Arc::new(AtomicBool::new(false));
    let (sent, fell_back) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let mut tasks = Vec::new();
    for t in 0..4 {
        let (proxy, stop, sent, fell_back) = (proxy.clone(), stop.clone(), sent.clone(), fell_back.clone());
        tasks.push(tokio::spawn(async move {
            let client = reqwest::Client::new();
            let mut errors = Vec::new();
            let mut i = t;
            while !stop.load(Ordering::Relaxed) {
                i += 1;
                let url = proxy.url(&format!("/api/inventory/SKU-{:04}", i % 200 + 1));
                match client.get(url).send().await {
                    Ok(r) if r.status().is_success() => {
                        sent.fetch_add(1, Ordering::Relaxed);
                        if r.headers().contains_key("x-strangler-fallback") {
                            fell_back.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    Ok(r) => errors.push(format!("status {}", r.status())),
                    Err(e) => errors.push(e.to_string()),
                }
            }
            errors
        }));
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    shop.inventory_faults.set(FaultSettings {
        refuse: true,
        ..Default::default()
    });
    tokio::time::sleep(Duration::from_secs(7)).await;
    stop.store(true, Ordering::Relaxed);
    let mut errors = Vec::new();
    for t in tasks {
        errors.extend(t.await.unwrap());
    }
    assert!(
        errors.is_empty(),
        "{} client errors, e.g. {:?}",
        errors.len(),
        &errors[..errors.len().min(5)]
    );
    let (sent, fell_back) = (
        sent.load(Ordering::Relaxed) as u64,
        fell_back.load(Ordering::Relaxed) as u64,
    );
    let reached = shop.inventory_faults.requests();
    let m = proxy.metrics().await;
    let counted: u64 = [
        "connect_error",
        "timeout",
        "status_5xx",
        "reset",
        "circuit_open",
        "overloaded",
    ]
    .iter()
    .map(|r| {
        metric(
            &m,
            &format!("strangler_fallbacks_total{{reason=\"{r}\",route=\"stock\"}}"),
        )
    })
    .sum();
    assert!(
        fell_back > 0 && reached > 0,
        "both sides served: sent {sent}, fell back {fell_back}, reached {reached}"
    );
    assert_eq!(counted, fell_back, "every fallback is counted\n{m}");
    assert_eq!(
        sent - reached,
        fell_back,
        "the fallbacks are exactly the requests that could not reach the service"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_post_is_never_sent_to_both() {
    let shop = start_shop().await;
    let ord = "    circuit_breaker: { enabled: false }\n    timeouts: { connect: 300ms, response: 300ms }\n";
    let routes = "  - { name: create-keyed, match: { path: /api/orders, methods: [POST], headers: { idempotency-key: present } }, mode: migrated, service: orders, fallback_writes: true }\n\
                  \x20 - { name: create, match: { path: /api/orders, methods: [POST] }, mode: migrated, service: orders }\n";
    let proxy = Proxy::start(&rules(&shop, "", ord, routes)).await;
    let client = reqwest::Client::new();
    let order = json!({"user_id": 3, "items": [{"sku": "SKU-0005", "quantity": 1}]});
    let post = || client.post(proxy.url("/api/orders")).json(&order);
    let counts = || (orders_in(&shop.db("monolith")), orders_in(&shop.db("orders")));
    let (mono0, svc0) = counts();

    // 5xx, no key: the client gets the service's answer; nothing is created anywhere.
    shop.orders_faults.set(FaultSettings {
        error_rate: 1.0,
        ..Default::default()
    });
    let a = answer(post()).await;
    assert_eq!(
        (a.status, a.upstream.as_str(), a.fallback.as_deref()),
        (503, "orders", None)
    );
    assert_eq!(counts(), (mono0, svc0));

    // 5xx, with a key on a fallback_writes route: falls back, exactly one order.
    let a = answer(post().header("idempotency-key", "k-1")).await;
    assert_eq!(
        (a.status, a.upstream.as_str(), a.fallback.as_deref()),
        (201, "monolith", Some("status_5xx"))
    );
    assert_eq!(counts(), (mono0 + 1, svc0));

    // The service is down: the POST never reached it, so it falls back even without a key.
    shop.orders_faults.set(FaultSettings {
        refuse: true,
        ..Default::default()
    });
    shop.orders_faults.until_listening(false).await;
    let fresh = reqwest::Client::new();
    let a = answer(fresh.post(proxy.url("/api/orders")).json(&order)).await;
    assert_eq!(
        (a.status, a.upstream.as_str(), a.fallback.as_deref()),
        (201, "monolith", Some("connect_error"))
    );
    assert_eq!(counts(), (mono0 + 2, svc0));

    // Too slow, no key: it may have reached the service, so the client gets a 504 and the
    // monolith is never asked. Whether the service finishes the order after the proxy hung up
    // is the service's business: at most one order, in one place.
    shop.orders_faults.set(FaultSettings {
        latency: Duration::from_millis(800),
        ..Default::default()
    });
    shop.orders_faults.until_listening(true).await;
    let fresh = reqwest::Client::new();
    let a = answer(fresh.post(proxy.url("/api/orders")).json(&order)).await;
    assert_eq!((a.status, a.fallback.as_deref()), (504, None), "{}", a.body);
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let (mono, svc) = counts();
    assert_eq!(mono, mono0 + 2, "the monolith never saw the slow POST");
    assert!(
        svc == svc0 || svc == svc0 + 1,
        "at most one order in the service: {svc0} -> {svc}"
    );

    let m = proxy.metrics().await;
    assert_eq!(
        metric(
            &m,
            "strangler_fallbacks_skipped_total{reason=\"not_idempotent\",route=\"create\"}"
        ),
        2,
        "{m}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_body_over_64_kib_is_never_replayed() {
    let shop = start_shop().await;
    let proxy = Proxy::start(&rules(&shop, NO_BREAKER, "", STOCK)).await;
    // The service holds the request a moment, so the proxy has read the whole body by the time
    // the 503 arrives: the replay buffer (64 KiB) is then known to be truncated.
    shop.inventory_faults.set(FaultSettings {
        error_rate: 1.0,
        latency: Duration::from_millis(100),
        ..Default::default()
    });
    let client = reqwest::Client::new();
    let body = vec![b'x'; 100 * 1024];
    let a = answer(client.put(proxy.url("/api/inventory/SKU-0001")).body(body)).await;
    assert_eq!(a.fallback, None, "never replayed to the monolith");
    assert_ne!(a.upstream, "monolith");
    let m = proxy.metrics().await;
    assert_eq!(
        metric(
            &m,
            "strangler_fallbacks_skipped_total{reason=\"body_too_large\",route=\"stock\"}"
        ),
        1,
        "{m}"
    );
    assert_eq!(
        metric(&m, "strangler_fallbacks_total{reason=\"status_5xx\",route=\"stock\"}"),
        0,
        "{m}"
    );

    // A small PUT on the same route is replayed (the monolith answers it: 405, not a PUT endpoint).
    let a = answer(client.put(proxy.url("/api/inventory/SKU-0001")).body("{}")).await;
    assert_eq!(
        (a.upstream.as_str(), a.fallback.as_deref()),
        ("monolith", Some("status_5xx"))
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_circuit_opens_then_half_opens_then_closes() {
    let shop = start_shop().await;
    let inv = "    circuit_breaker: { failure_ratio: 0.5, min_requests: 4, window: 10s, open_for: 1s, half_open_probes: 2 }\n";
    let proxy = Proxy::start(&rules(&shop, inv, "", STOCK)).await;
    let client = reqwest::Client::new();
    let get = || client.get(proxy.url("/api/inventory/SKU-0001"));
    let state = |m: &str| metric(m, "strangler_circuit_state{upstream=\"inventory\"}");

    shop.inventory_faults.set(FaultSettings {
        error_rate: 1.0,
        ..Default::default()
    });
    for _ in 0..4 {
        assert_eq!(answer(get()).await.fallback.as_deref(), Some("status_5xx"));
    }
    assert_eq!(state(&proxy.metrics().await), 2, "open after 4 of 4 failed");
    let reached = shop.inventory_faults.requests();
    for _ in 0..10 {
        let a = answer(get()).await;
        assert_eq!((a.status, a.fallback.as_deref()), (200, Some("circuit_open")));
    }
    assert_eq!(
        shop.inventory_faults.requests(),
        reached,
        "an open circuit sends the service nothing"
    );

    // The service recovers; after open_for, probes go through and close the circuit.
    shop.inventory_faults.reset();
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let a = answer(get()).await;
    assert_eq!(
        (a.upstream.as_str(), a.fallback.as_deref()),
        ("inventory", None),
        "first probe"
    );
    assert_eq!(state(&proxy.metrics().await), 1, "half-open while probing");
    let a = answer(get()).await;
    assert_eq!(
        (a.upstream.as_str(), a.fallback.as_deref()),
        ("inventory", None),
        "second probe"
    );
    assert_eq!(state(&proxy.metrics().await), 0, "closed after the probes succeeded");
    assert_eq!(answer(get()).await.upstream, "inventory");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_bulkhead_sheds_exactly_the_one_over_the_limit() {
    let shop = start_shop().await;
    let inv = "    max_in_flight: 3\n";
    let proxy = Arc::new(Proxy::start(&rules(&shop, inv, "", STOCK)).await);
    shop.inventory_faults.set(FaultSettings {
        latency: Duration::from_millis(1000),
        ..Default::default()
    });
    let calls: Vec<_> = (0..4)
        .map(|i| {
            let url = proxy.url(&format!("/api/inventory/SKU-000{}", i + 1));
            tokio::spawn(async move {
                let r = reqwest::get(url).await.unwrap();
                (
                    r.status().as_u16(),
                    r.headers()
                        .get("x-strangler-fallback")
                        .map(|v| v.to_str().unwrap().to_string()),
                )
            })
        })
        .collect();
    let mut shed = 0;
    for c in calls {
        let (status, fallback) = c.await.unwrap();
        assert_eq!(status, 200);
        match fallback.as_deref() {
            Some("overloaded") => shed += 1,
            None => {}
            other => panic!("unexpected fallback {other:?}"),
        }
    }
    assert_eq!(shed, 1, "limit 3, four at once: one shed");
    let m = proxy.metrics().await;
    assert_eq!(
        metric(&m, "strangler_upstream_in_flight{upstream=\"inventory\"}"),
        0,
        "slots are given back"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn without_fallback_a_full_bulkhead_answers_503_with_retry_after() {
    let shop = start_shop().await;
    let routes =
        "  - { name: stock, match: { prefix: /api/inventory }, mode: migrated, service: inventory, fallback: false }\n";
    let proxy = Arc::new(Proxy::start(&rules(&shop, "    max_in_flight: 1\n", "", routes)).await);
    shop.inventory_faults.set(FaultSettings {
        latency: Duration::from_millis(800),
        ..Default::default()
    });
    let slow = {
        let url = proxy.url("/api/inventory/SKU-0001");
        tokio::spawn(async move { reqwest::get(url).await.unwrap().status().as_u16() })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    let r = reqwest::get(proxy.url("/api/inventory/SKU-0002")).await.unwrap();
    assert_eq!(r.status(), 503);
    assert_eq!(r.headers()["retry-after"], "1");
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["reason"], "overloaded");
    assert_eq!(slow.await.unwrap(), 200, "the one in flight is served");
}

#[tokio::test(flavor = "multi_thread")]
async fn fallback_off_gives_the_client_the_services_answer() {
    let shop = start_shop().await;
    let routes =
        "  - { name: stock, match: { prefix: /api/inventory }, mode: migrated, service: inventory, fallback: false }\n";
    let proxy = Proxy::start(&rules(&shop, NO_BREAKER, "", routes)).await;
    shop.inventory_faults.set(FaultSettings {
        error_rate: 1.0,
        ..Default::default()
    });
    let client = reqwest::Client::new();
    let a = answer(client.get(proxy.url("/api/inventory/SKU-0001"))).await;
    assert_eq!(
        (a.status, a.upstream.as_str(), a.fallback.as_deref()),
        (503, "inventory", None)
    );
    assert_eq!(a.body["error"]["code"], "injected_fault");
}

#[tokio::test(flavor = "multi_thread")]
async fn health_checks_flip_up_and_readyz_both_ways() {
    // The legacy upstream's port is free at first: nothing listens there yet.
    let mono_port = common::proxy::free_port();
    let mono: SocketAddr = ([127, 0, 0, 1], mono_port).into();
    let shop = start_shop().await;
    let health =
        "    health: { path: /healthz, interval: 100ms, timeout: 200ms, unhealthy_after: 2, healthy_after: 2 }\n";
    let text = format!(
        "legacy: monolith\nupstreams:\n  monolith:\n    url: \"http://{mono}\"\n{health}  inventory:\n    url: \"http://{}\"\n{health}routes:\n{STOCK}",
        shop.inventory
    );
    let proxy = Proxy::start(&text).await;
    let client = reqwest::Client::new();
    let until = |what: &'static str, want: u16| {
        let client = client.clone();
        let url = proxy.admin_url("/readyz");
        async move {
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                let got = client.get(&url).send().await.unwrap().status().as_u16();
                if got == want {
                    return;
                }
                assert!(Instant::now() < deadline, "{what}: /readyz stayed {got}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    until("monolith down", 503).await;
    let m = proxy.metrics().await;
    assert_eq!(metric(&m, "strangler_upstream_up{upstream=\"monolith\"}"), 0, "{m}");

    // The monolith comes up on its port: ready.
    let dir = tempfile::tempdir().unwrap();
    let listener = tokio::net::TcpListener::bind(mono).await.unwrap();
    let (stop_tx, mut stop_rx) = tokio::sync::watch::channel(false);
    tokio::spawn(legacy_monolith::run(
        listener,
        legacy_monolith::Config::new(dir.path().join("m.db")),
        async move {
            let _ = stop_rx.wait_for(|s| *s).await;
        },
    ));
    until("monolith up", 200).await;

    // The service stops listening: marked down, and its route falls back without trying it.
    shop.inventory_faults.set(FaultSettings {
        refuse: true,
        ..Default::default()
    });
    let deadline = Instant::now() + Duration::from_secs(10);
    while metric(&proxy.metrics().await, "strangler_upstream_up{upstream=\"inventory\"}") != 0 {
        assert!(Instant::now() < deadline, "inventory never marked down");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let a = answer(client.get(proxy.url("/api/inventory/SKU-0001"))).await;
    assert_eq!((a.status, a.fallback.as_deref()), (200, Some("circuit_open")));
    shop.inventory_faults.reset();
    let deadline = Instant::now() + Duration::from_secs(10);
    while metric(&proxy.metrics().await, "strangler_upstream_up{upstream=\"inventory\"}") != 1 {
        assert!(Instant::now() < deadline, "inventory never marked up again");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let _ = stop_tx.send(true);
}

#[tokio::test(flavor = "multi_thread")]
async fn when_the_monolith_fails_the_client_gets_a_short_502_and_the_proxy_stays_up() {
    let shop = start_shop().await;
    let dead: SocketAddr = ([127, 0, 0, 1], common::proxy::free_port()).into();
    let text = format!(
        "legacy: monolith\nupstreams:\n  monolith: {{ url: \"http://{dead}\" }}\n  inventory: {{ url: \"http://{}\" }}\nroutes:\n{STOCK}",
        shop.inventory
    );
    let proxy = Proxy::start(&text).await;
    let client = reqwest::Client::new();
    let a = answer(client.get(proxy.url("/account/1"))).await;
    assert_eq!(a.status, 502);
    assert_eq!(a.body["error"], "upstream_failed");
    assert_eq!(a.body["upstream"], "monolith");
    let a = answer(client.get(proxy.url("/api/inventory/SKU-0001"))).await;
    assert_eq!(
        (a.status, a.upstream.as_str()),
        (200, "inventory"),
        "the proxy keeps serving"
    );
}
