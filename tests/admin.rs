//! The admin listener: live figures in /api/routes, the dashboard page, the admin token,
//! refusing an open admin port without one, and the access log.

mod common;

use std::time::Duration;

use common::proxy::{rules, strangler, Proxy};
use common::shop::{start_shop, Shop};
use serde_json::Value;

const ROUTES: &str = "  - { name: stock, match: { prefix: /api/inventory }, mode: canary, service: inventory, canary: { percent: 50, sticky: \"header:x-user-id\" } }\n\
                      \x20 - { name: orders-read, match: { path: \"/api/orders/{id}\", methods: [GET] }, mode: shadow, service: orders, shadow: { ignore: [\"$.served_at\"] } }\n";

#[tokio::test(flavor = "multi_thread")]
async fn routes_api_shows_live_figures() {
    let shop = start_shop().await;
    let ups = [
        ("monolith", shop.monolith),
        ("inventory", shop.inventory),
        ("orders", shop.orders),
    ];
    let proxy = Proxy::start(&rules(&ups, ROUTES)).await;
    let client = reqwest::Client::new();
    for i in 0..200 {
        client
            .get(proxy.url("/api/inventory/SKU-0001"))
            .header("x-user-id", i.to_string())
            .send()
            .await
            .unwrap();
    }
    for id in 1..=10 {
        client
            .get(proxy.url(&format!("/api/orders/{id}")))
            .send()
            .await
            .unwrap();
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let v: Value = client
        .get(proxy.admin_url("/api/routes"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let route = |name: &str| {
        v["routes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["name"] == name)
            .unwrap()
            .clone()
    };

    let stock = route("stock");
    assert_eq!(stock["mode"], "canary");
    assert_eq!(stock["canary_percent"], 50.0);
    let all = &stock["live"]["since_start"];
    assert_eq!(all["requests"]["total"], 200);
    let share = all["new_share"].as_f64().unwrap();
    assert!((0.35..=0.65).contains(&share), "about half on the new side: {share}");
    assert!(all["latency"]["new"]["p99_ms"].as_f64().unwrap() > 0.0, "{all}");
    assert_eq!(
        stock["live"]["last_minute"]["requests"]["total"], 200,
        "{}",
        stock["live"]
    );

    let orders = route("orders-read");
    let shadow = &orders["live"]["since_start"]["shadow"];
    assert_eq!(shadow["compared"], 10, "{shadow}");
    assert_eq!(shadow["match_rate"], 1.0);

    assert_eq!(v["totals"]["routes_by_mode"]["canary"], 1);
    assert_eq!(v["totals"]["last_minute"]["requests"], 210);
    let page = client.get(proxy.admin_url("/")).send().await.unwrap();
    assert!(page.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/html"));
    let html = page.text().await.unwrap();
    assert!(html.contains("<table id=\"routes\">"));
    assert!(
        !html.contains("<script src") && !html.contains("<link") && !html.contains("https://"),
        "offline: nothing loaded from elsewhere"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn admin_posts_need_the_token_when_one_is_set() {
    let shop = start_shop().await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("rules.yaml");
    std::fs::write(&path, rules(&[("monolith", shop.monolith)], "")).unwrap();
    let proxy = Proxy::start_with(
        dir,
        path,
        &[],
        &[("RUST_LOG", "warn"), ("STRANGLER_ADMIN_TOKEN", "s3cret")],
    )
    .await;
    let client = reqwest::Client::new();
    let reload = |auth: Option<&'static str>| {
        let mut req = client.post(proxy.admin_url("/api/reload"));
        if let Some(a) = auth {
            req = req.header("authorization", a);
        }
        async move { req.send().await.unwrap().status().as_u16() }
    };
    assert_eq!(reload(None).await, 401);
    assert_eq!(reload(Some("Bearer wrong")).await, 401);
    assert_eq!(reload(Some("s3cret")).await, 401);
    assert_eq!(reload(Some("Bearer s3cret")).await, 200);
    assert_eq!(
        client
            .get(proxy.admin_url("/api/config"))
            .send()
            .await
            .unwrap()
            .status(),
        200,
        "reads need no token"
    );
}

#[test]
fn an_open_admin_port_without_a_token_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("rules.yaml");
    std::fs::write(&path, "legacy: m\nupstreams:\n  m: { url: \"http://127.0.0.1:1\" }\n").unwrap();
    let out = strangler()
        .args([
            "run",
            "--config",
            path.to_str().unwrap(),
            "--listen",
            "127.0.0.1:0",
            "--admin",
            "0.0.0.0:19999",
        ])
        .env_remove("STRANGLER_ADMIN_TOKEN")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("refusing to serve the admin API on 0.0.0.0:19999 without a token"),
        "{err}"
    );
    assert!(err.contains("STRANGLER_ADMIN_TOKEN"), "{err}");
}

/// The shop behind a proxy on `ROUTES`, started with these arguments and environment.
async fn shop_proxy(args: &[&str], env: &[(&str, &str)]) -> (Shop, Proxy) {
    let shop = start_shop().await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("rules.yaml");
    let ups = [
        ("monolith", shop.monolith),
        ("inventory", shop.inventory),
        ("orders", shop.orders),
    ];
    std::fs::write(&path, rules(&ups, ROUTES)).unwrap();
    let proxy = Proxy::start_with(dir, path, args, env).await;
    (shop, proxy)
}

#[tokio::test(flavor = "multi_thread")]
async fn every_request_gets_an_access_log_line() {
    let (_shop, proxy) = shop_proxy(&["--log-format", "json"], &[("RUST_LOG", "warn,access=info")]).await;
    let client = reqwest::Client::new();
    client
        .get(proxy.url("/api/orders/7"))
        .header("x-request-id", "req-42")
        .header("traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
        .send()
        .await
        .unwrap();
    let mut line = None;
    for _ in 0..50 {
        line = proxy.log().lines().find(|l| l.contains("req-42")).map(str::to_string);
        if line.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let line = line.unwrap_or_else(|| panic!("no access line:\n{}", proxy.log()));
    let v: Value = serde_json::from_str(&line).unwrap();
    let f = &v["fields"];
    assert_eq!(v["target"], "access");
    assert_eq!(
        (f["route"].as_str(), f["side"].as_str(), f["upstream"].as_str()),
        (Some("orders-read"), Some("legacy"), Some("monolith"))
    );
    assert_eq!(f["status"], 200);
    assert_eq!(f["shadow"], "copied");
    assert_eq!(
        f["shadow_result"], "match",
        "a copied request's line carries the comparison's result"
    );
    assert_eq!(f["fallback"], "-");
    assert_eq!(f["trace_id"], "4bf92f3577b34da6a3ce929d0e0e4736");
    assert!(f["duration_ms"].as_f64().unwrap() > 0.0);

    // --access-log false turns it off.
    let (_quiet_shop, quiet) = shop_proxy(&["--access-log", "false"], &[("RUST_LOG", "info")]).await;
    client
        .get(quiet.url("/api/orders/7"))
        .header("x-request-id", "req-43")
        .send()
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!quiet.log().contains("req-43"), "{}", quiet.log());
}

#[tokio::test(flavor = "multi_thread")]
async fn the_text_access_line_reads_name_equals_value_without_colour_codes() {
    let (_shop, proxy) = shop_proxy(&[], &[("RUST_LOG", "warn,access=info")]).await;
    reqwest::Client::new()
        .get(proxy.url("/api/orders/7"))
        .header("x-request-id", "req-text-7")
        .send()
        .await
        .unwrap();
    let log = proxy.log_with(&["req-text-7 "]).await;
    let line = log
        .lines()
        .find(|l| l.contains("req-text-7"))
        .unwrap_or_else(|| panic!("no access line:\n{log}"));
    assert!(
        line.contains(
            " INFO access: method=GET path=/api/orders/7 route=orders-read side=\"legacy\" upstream=monolith status=200 "
        ),
        "{line}"
    );
    assert!(
        line.contains(" shadow=\"copied\" shadow_result=\"match\" request_id=req-text-7 trace_id=-"),
        "{line}"
    );
    assert!(!line.contains('\x1b'), "no colour codes into a file: {line:?}");
}

#[test]
fn the_admin_port_is_loopback_by_default() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("rules.yaml");
    // No `admin:` in the file and no --admin: the default applies.
    std::fs::write(&path, "legacy: m\nupstreams:\n  m: { url: \"http://127.0.0.1:1\" }\n").unwrap();
    let listen = format!("127.0.0.1:{}", common::proxy::free_port());
    let mut child = strangler()
        .args(["run", "--config", path.to_str().unwrap(), "--listen", &listen])
        .env_remove("STRANGLER_ADMIN_TOKEN")
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // The listening sockets on port 9911 (0x26B7), from the kernel's table: local address, state 0A.
    let listeners = || -> Vec<String> {
        let table = std::fs::read_to_string("/proc/net/tcp").unwrap_or_default()
            + &std::fs::read_to_string("/proc/net/tcp6").unwrap_or_default();
        table
            .lines()
            .filter_map(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                (f.len() > 3 && f[1].ends_with(":26B7") && f[3] == "0A").then(|| f[1].to_string())
            })
            .collect()
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let mut seen = listeners();
    while seen.is_empty() && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(50));
        seen = listeners();
    }
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(
        seen,
        vec!["0100007F:26B7".to_string()],
        "admin must listen on 127.0.0.1:9911 only"
    );
}
