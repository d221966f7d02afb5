//! The migration map (issue #23), end to end: the shop's traffic through the bundled rules makes
//! exactly the shop's endpoints, ids and junk stay bounded, the map survives a restart, and the
//! `suggest` and `endpoints` commands work against a running proxy.

mod common;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::proxy::{rules, strangler, Proxy};
use common::shop::{start_shop, Shop};
use futures_util::stream::{self, StreamExt};
use serde_json::{json, Value};

/// One endpoint as the map shows it: method, template, capability, state, requests.
type Row = (String, String, String, String, u64);

/// What `shop_mix` makes of the bundled rules, busiest legacy endpoint first. Every count is
/// the number of requests `shop_mix` sends there.
const SHOP_MAP: &[(&str, &str, &str, &str, u64)] = &[
    // No route, or a legacy route with a prefix: learned templates.
    ("GET", "/api/users/{id}", "users", "legacy", 10),
    ("GET", "/products/{id}", "products", "legacy", 9),
    ("GET", "/api/catalog/products/{id}", "catalog", "legacy", 8),
    ("GET", "/account/{id}", "account", "legacy", 7),
    ("GET", "/api/payments/order/{id}", "payments", "legacy", 6),
    ("GET", "/api/catalog/products", "catalog", "legacy", 5),
    ("DELETE", "/api/inventory/reservations/{id}", "inventory", "legacy", 4),
    ("POST", "/api/payments", "payments", "legacy", 3),
    ("GET", "/", "home", "legacy", 2),
    ("GET", "/healthz", "healthz", "legacy", 1),
    // inventory-read is a prefix: learned (SKU-0001 is an id), the route's mode.
    ("GET", "/api/inventory/{id}", "inventory", "migrated", 6),
    // Routes with a path: the route's own template.
    ("POST", "/api/inventory/{sku}/reservations", "inventory", "canary", 4),
    ("POST", "/api/orders", "orders", "canary", 4),
    ("GET", "/api/orders/{id}", "orders", "shadow", 5),
    ("GET", "/api/users/{id}/orders", "users", "shadow", 3),
];

fn expected(list: &[(&str, &str, &str, &str, u64)]) -> BTreeSet<Row> {
    list.iter()
        .map(|(m, t, c, s, n)| (m.to_string(), t.to_string(), c.to_string(), s.to_string(), *n))
        .collect()
}

fn rows(map: &Value) -> BTreeSet<Row> {
    map["endpoints"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|e| {
            let s = |k: &str| e[k].as_str().unwrap_or("?").to_string();
            let requests = e["requests"].as_u64().unwrap_or(0);
            (s("method"), s("template"), s("capability"), s("state"), requests)
        })
        .collect()
}

fn show(rows: &BTreeSet<Row>) -> String {
    rows.iter()
        .map(|(m, t, c, s, n)| format!("  {m} {t} [{c}] {s} x{n}\n"))
        .collect()
}

/// The repo's rules.yaml, its upstreams pointed at the test shop.
fn bundled_rules(shop: &Shop) -> String {
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/rules.yaml")).expect("read rules.yaml");
    let mut out = text.clone();
    for (url, addr) in [
        ("\"http://127.0.0.1:8000\"", shop.monolith),
        ("\"http://127.0.0.1:8101\"", shop.inventory),
        ("\"http://127.0.0.1:8102\"", shop.orders),
    ] {
        assert!(out.contains(url), "rules.yaml no longer has {url}:\n{text}");
        out = out.replace(url, &format!("\"http://{addr}\""));
    }
    out
}

/// `GET /api/endpoints{query}` until `done` holds, for up to 10 s (the map folds once a
/// second); the last answer either way.
async fn map_until(proxy: &Proxy, query: &str, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let map = proxy.admin_json(&format!("/api/endpoints{query}")).await;
        if done(&map) || Instant::now() >= deadline {
            return map;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Every request of the map, endpoints and `(other)`.
fn total(map: &Value) -> u64 {
    let listed: u64 = rows(map).iter().map(|r| r.4).sum();
    listed + map["other"]["requests"].as_u64().unwrap_or(0)
}

/// Send `req`, panic on a 5xx or no answer; the status and the JSON body (or `Null`).
async fn send(req: reqwest::RequestBuilder, what: &str) -> (u16, String, Value) {
    let r = req.send().await.unwrap_or_else(|e| panic!("{what}: {e}"));
    let status = r.status().as_u16();
    let upstream = r
        .headers()
        .get("x-strangler-upstream")
        .map(|v| v.to_str().unwrap_or("").to_string())
        .unwrap_or_default();
    let body = r.json().await.unwrap_or(Value::Null);
    assert!(status < 500, "{what}: {status} {body}");
    (status, upstream, body)
}

/// A mix over every shop endpoint in docs/SHOP.md, with the counts of `SHOP_MAP`.
async fn shop_mix(client: &reqwest::Client, proxy: &Proxy) {
    let get = |path: String| async move {
        let (status, _, body) = send(client.get(proxy.url(&path)), &format!("GET {path}")).await;
        assert!(status == 200 || status == 404, "GET {path}: {status} {body}");
    };
    get("/healthz".into()).await;
    for _ in 0..2 {
        get("/".into()).await;
    }
    for i in 1..=9 {
        get(format!("/products/{i}")).await;
    }
    for i in 1..=7 {
        get(format!("/account/{i}")).await;
    }
    for page in 1..=5 {
        get(format!("/api/catalog/products?page={page}&per_page=20")).await;
    }
    for i in 1..=8 {
        get(format!("/api/catalog/products/{i}")).await;
    }
    for i in 1..=6 {
        get(format!("/api/inventory/SKU-{i:04}")).await;
    }
    // Reservations: 25% canary, sticky per user, so who holds each one is fixed.
    let mut held = Vec::new();
    for i in 11..=14 {
        let path = format!("/api/inventory/SKU-{i:04}/reservations");
        let req = client
            .post(proxy.url(&path))
            .header("x-user-id", format!("user-{i}"))
            .json(&json!({"quantity": 1}));
        let (status, upstream, body) = send(req, &format!("POST {path}")).await;
        assert_eq!(status, 201, "POST {path}: {body}");
        held.push((body["id"].as_u64().expect("reservation id"), upstream));
    }
    // Release the monolith's first (DELETE has no route: the monolith serves it), then the rest.
    held.sort_by_key(|(_, upstream)| upstream != "monolith");
    assert!(
        held.iter().any(|(_, u)| u == "monolith"),
        "no reservation on the monolith: {held:?}"
    );
    for (id, upstream) in &held {
        let path = format!("/api/inventory/reservations/{id}");
        let (status, _, body) = send(client.delete(proxy.url(&path)), &format!("DELETE {path}")).await;
        if upstream == "monolith" {
            assert_eq!(status, 200, "DELETE {path}: {body}");
        }
    }
    for i in 1..=4 {
        let req = client
            .post(proxy.url("/api/orders"))
            .header("x-api-version", "2")
            .header("x-user-id", format!("user-{i}"))
            .json(&json!({"user_id": i, "items": [{"sku": "SKU-0021", "quantity": 1}]}));
        let (status, _, body) = send(req, "POST /api/orders").await;
        assert_eq!(status, 201, "POST /api/orders: {body}");
    }
    for i in 1..=5 {
        get(format!("/api/orders/{i}")).await;
    }
    for i in 1..=3 {
        get(format!("/api/users/{i}/orders")).await;
    }
    for i in 1..=3 {
        let req = client.post(proxy.url("/api/payments")).json(&json!({"order_id": i}));
        let (status, _, body) = send(req, "POST /api/payments").await;
        assert!(status == 201 || status == 409, "POST /api/payments: {status} {body}");
    }
    for i in 1..=6 {
        get(format!("/api/payments/order/{i}")).await;
    }
    for i in 1..=10 {
        get(format!("/api/users/{i}")).await;
    }
}

/// The shop behind the bundled rules, with `shop_mix` sent and folded into the map.
async fn shop_with_map() -> (Shop, Proxy, reqwest::Client) {
    let shop = start_shop().await;
    let proxy = Proxy::start(&bundled_rules(&shop)).await;
    let client = reqwest::Client::new();
    shop_mix(&client, &proxy).await;
    let want = expected(SHOP_MAP);
    let map = map_until(&proxy, "", |m| rows(m) == want).await;
    let got = rows(&map);
    assert!(
        got == want,
        "the map is not the shop's endpoints\nonly in the map:\n{}only expected:\n{}",
        show(&got.difference(&want).cloned().collect()),
        show(&want.difference(&got).cloned().collect()),
    );
    (shop, proxy, client)
}

#[tokio::test(flavor = "multi_thread")]
async fn the_shop_traffic_makes_exactly_the_shops_endpoints_in_their_states() {
    let (_shop, proxy, _client) = shop_with_map().await;
    let map = proxy.admin_json("/api/endpoints").await;
    assert_eq!(map["other"]["requests"], 0, "{map}");
    let p = &map["progress"];
    assert_eq!(p["endpoints"], 15, "{p}");
    assert_eq!(
        p["states"],
        json!({"legacy": 10, "shadow": 2, "canary": 2, "migrated": 1}),
        "{p}"
    );
    // Route templates are written, not learned; the rest learned.
    let endpoint = |m: &str, t: &str| -> Value {
        map["endpoints"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["method"] == m && e["template"] == t)
            .cloned()
            .unwrap_or_else(|| panic!("{m} {t} not in {map}"))
    };
    let reserve = endpoint("POST", "/api/inventory/{sku}/reservations");
    assert_eq!(
        (&reserve["learned"], &reserve["route"], &reserve["service"]),
        (&json!(false), &json!("inventory-reserve"), &json!("inventory")),
        "{reserve}"
    );
    let stock = endpoint("GET", "/api/inventory/{id}");
    assert_eq!(
        (&stock["learned"], &stock["route"], &stock["new_share"]),
        (&json!(true), &json!("inventory-read"), &json!(1.0)),
        "{stock}"
    );
    let user = endpoint("GET", "/api/users/{id}");
    assert_eq!((&user["route"], &user["mode"]), (&Value::Null, &Value::Null), "{user}");
    // The filters.
    let shadow = proxy.admin_json("/api/endpoints?state=shadow").await;
    let want: BTreeSet<Row> = expected(SHOP_MAP).into_iter().filter(|r| r.3 == "shadow").collect();
    assert_eq!(rows(&shadow), want, "{shadow}");
    let users = proxy.admin_json("/api/endpoints?capability=users").await;
    let want: BTreeSet<Row> = expected(SHOP_MAP).into_iter().filter(|r| r.2 == "users").collect();
    assert_eq!(rows(&users), want, "{users}");
}

/// GET every path through the proxy, 16 at a time; each must answer 200.
async fn get_all(client: &reqwest::Client, proxy: &Proxy, paths: Vec<String>) {
    let statuses: Vec<(String, u16)> = stream::iter(paths)
        .map(|path| {
            let req = client.get(proxy.url(&path));
            async move {
                let status = req.send().await.map_or(0, |r| r.status().as_u16());
                (path, status)
            }
        })
        .buffer_unordered(16)
        .collect()
        .await;
    let bad: Vec<_> = statuses.iter().filter(|(_, s)| *s != 200).take(5).collect();
    assert!(bad.is_empty(), "failed requests: {bad:?}");
}

fn echo_rules(echo: SocketAddr, head: &str) -> String {
    format!(
        "{head}{}",
        rules(
            &[("legacy", echo)],
            "  - { name: all, match: { prefix: / }, mode: legacy }\n"
        )
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn ids_fold_into_one_template_and_junk_leaves_the_real_endpoints_in_a_bounded_map() {
    let echo = common::echo::start("legacy").await;
    let client = reqwest::Client::new();

    // Thousands of ids of every kind under one path: one endpoint.
    let proxy = Proxy::start(&echo_rules(echo, "")).await;
    const IDS: u64 = 3000;
    let ids = (0..IDS)
        .map(|i| match i % 3 {
            0 => format!("/api/things/{i}"),
            1 => format!("/api/things/SKU-{i:05}"),
            _ => format!("/api/things/{:08x}-4f89-11d3-9a0c-{i:012x}", i * 7919),
        })
        .collect();
    get_all(&client, &proxy, ids).await;
    let want = expected(&[("GET", "/api/things/{id}", "things", "legacy", IDS)]);
    let map = map_until(&proxy, "", |m| rows(m) == want).await;
    assert_eq!(rows(&map), want, "{map}");
    assert_eq!(map["other"]["requests"], 0, "{map}");
    drop(proxy);

    // Real traffic, then thousands of junk paths, into a map of at most 50 endpoints.
    let proxy = Proxy::start(&echo_rules(echo, "discovery: { max_endpoints: 50 }\n")).await;
    const EACH: u64 = 30;
    let real: Vec<String> = (1..=EACH)
        .flat_map(|i| {
            [
                "/".to_string(),
                format!("/products/{i}"),
                format!("/account/{i}"),
                "/api/catalog/products".to_string(),
            ]
        })
        .collect();
    get_all(&client, &proxy, real).await;
    let real_rows = expected(&[
        ("GET", "/", "home", "legacy", EACH),
        ("GET", "/products/{id}", "products", "legacy", EACH),
        ("GET", "/account/{id}", "account", "legacy", EACH),
        ("GET", "/api/catalog/products", "catalog", "legacy", EACH),
    ]);
    let map = map_until(&proxy, "", |m| rows(m) == real_rows).await;
    assert_eq!(rows(&map), real_rows, "{map}");
    // Letters only (nothing looks like an id), one to three segments.
    const JUNK: u64 = 3000;
    let mut seed = 11u64;
    let mut word = || -> String {
        (0..8)
            .map(|_| {
                seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                (b'a' + (seed >> 33) as u8 % 26) as char
            })
            .collect()
    };
    let junk = (0..JUNK)
        .map(|i| (0..1 + i % 3).map(|_| format!("/{}", word())).collect())
        .collect();
    get_all(&client, &proxy, junk).await;
    let map = map_until(&proxy, "", |m| total(m) == JUNK + 4 * EACH).await;
    assert_eq!(total(&map), JUNK + 4 * EACH, "not every request was counted: {map}");
    let got = rows(&map);
    let missing: Vec<_> = real_rows.difference(&got).collect();
    assert!(
        missing.is_empty(),
        "real endpoints pushed out or renamed: {missing:?}\nmap:\n{}",
        show(&got)
    );
    assert!(got.len() <= 50, "{} endpoints:\n{}", got.len(), show(&got));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_restarted_proxy_keeps_the_map() {
    let legacy = common::echo::start("legacy").await;
    let new = common::echo::start("new").await;
    let state = tempfile::tempdir().unwrap();
    let text = format!(
        "state_dir: \"{}\"\n{}",
        state.path().display(),
        rules(
            &[("legacy", legacy), ("new", new)],
            "  - { name: all, match: { prefix: / }, mode: legacy }\n  - { name: orders, match: { path: \"/api/orders/{order}\" }, mode: migrated, service: new }\n",
        )
    );
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("rules.yaml");
    std::fs::write(&path, &text).unwrap();
    let mut proxy = Proxy::start_file(dir, path, &["--grace-period", "1", "--shutdown-timeout", "1"]).await;
    let client = reqwest::Client::new();
    let paths = (1..=4)
        .map(|i| format!("/api/orders/{i}"))
        .chain((1..=3).map(|i| format!("/api/users/{i}")))
        .chain(["/".to_string()])
        .collect();
    get_all(&client, &proxy, paths).await;
    let want = expected(&[
        ("GET", "/api/orders/{order}", "orders", "migrated", 4),
        ("GET", "/api/users/{id}", "users", "legacy", 3),
        ("GET", "/", "home", "legacy", 1),
    ]);
    let before = map_until(&proxy, "", |m| rows(m) == want).await;
    assert_eq!(rows(&before), want, "{before}");

    proxy.stop_gracefully().await;
    let snapshot = state.path().join("endpoints.json");
    assert!(
        snapshot.is_file(),
        "no {} after shutdown; log:\n{}",
        snapshot.display(),
        proxy.log()
    );
    drop(proxy);

    let proxy = Proxy::start(&text).await;
    let after = proxy.admin_json("/api/endpoints").await;
    assert_eq!(rows(&after), want, "not the map from before the restart: {after}");
    let first_seen = |map: &Value| -> Vec<(Value, Value)> {
        let mut v: Vec<_> = map["endpoints"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| (e["template"].clone(), e["first_seen"].clone()))
            .collect();
        v.sort_by_key(|(t, _)| t.to_string());
        v
    };
    assert_eq!(first_seen(&after), first_seen(&before));
}

/// Run the `strangler` CLI off the test's runtime; (success, stdout, stderr).
async fn cli(args: Vec<String>) -> (bool, String, String) {
    let out = tokio::task::spawn_blocking(move || strangler().args(&args).output().expect("run strangler"))
        .await
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn suggest_puts_a_capability_in_shadow_and_the_map_follows() {
    let (_shop, proxy, client) = shop_with_map().await;
    let rules_path = proxy.rules.to_str().unwrap().to_string();
    let (ok, suggestion, err) = cli(vec![
        "suggest".into(),
        "users".into(),
        "--service".into(),
        "orders".into(),
        "--admin".into(),
        proxy.admin.to_string(),
        "--config".into(),
        rules_path.clone(),
    ])
    .await;
    assert!(ok, "suggest failed: {err}\n{suggestion}");
    // GET /api/users/{id}/orders is shadow already (route user-orders): left out, so the whole
    // rest of /api/users is the capability's own prefix.
    let routes: Vec<&str> = suggestion.lines().filter(|l| !l.starts_with('#')).collect();
    assert_eq!(
        routes,
        [
            "  - name: users-api-users",
            "    match: { prefix: \"/api/users\", methods: [GET] }",
            "    mode: shadow",
            "    service: orders",
            "    capability: users",
        ],
        "{suggestion}"
    );
    let comments: Vec<&str> = suggestion.lines().filter(|l| l.starts_with('#')).collect();
    assert!(
        comments.iter().any(|l| l.starts_with("# Paste under `routes:`")),
        "{suggestion}"
    );
    assert!(
        comments
            .iter()
            .any(|l| l.starts_with("# 1 endpoint(s) of users already move")),
        "{suggestion}"
    );

    // routes: is the last key of the bundled file: append.
    let generation = proxy.config().await["generation"].as_u64().unwrap();
    let mut text = std::fs::read_to_string(&proxy.rules).unwrap();
    assert!(text.ends_with('\n'));
    text.push_str(&suggestion);
    std::fs::write(&proxy.rules, &text).unwrap();
    let (ok, out, err) = cli(vec!["check".into(), rules_path]).await;
    assert!(ok, "check failed on the pasted suggestion: {err}\n{text}");
    assert_eq!(out, "ok: 8 routes (2 legacy, 3 shadow, 2 canary, 1 migrated)\n");

    let deadline = Instant::now() + Duration::from_secs(10);
    while proxy.config().await["generation"].as_u64() == Some(generation) {
        assert!(
            Instant::now() < deadline,
            "the edited rules were not loaded; log:\n{}",
            proxy.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for path in ["/api/users/1", "/api/users/2", "/api/users/2/orders"] {
        let (status, _, body) = send(client.get(proxy.url(path)), path).await;
        assert_eq!(status, 200, "GET {path}: {body}");
    }
    let want = expected(&[
        ("GET", "/api/users/{id}", "users", "shadow", 12),
        ("GET", "/api/users/{id}/orders", "users", "shadow", 4),
    ]);
    let map = map_until(&proxy, "?capability=users", |m| rows(m) == want).await;
    assert_eq!(rows(&map), want, "{map}");
    let routes: BTreeSet<(String, String)> = map["endpoints"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["template"].as_str().unwrap().into(),
                e["route"].as_str().unwrap_or("-").into(),
            )
        })
        .collect();
    assert_eq!(
        routes,
        BTreeSet::from([
            ("/api/users/{id}".to_string(), "users-api-users".to_string()),
            ("/api/users/{id}/orders".to_string(), "user-orders".to_string()),
        ])
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_endpoints_command_lists_the_legacy_endpoints_busiest_first() {
    let (_shop, proxy, _client) = shop_with_map().await;
    let (ok, out, err) = cli(vec![
        "endpoints".into(),
        "--admin".into(),
        proxy.admin.to_string(),
        "--state".into(),
        "legacy".into(),
    ])
    .await;
    assert!(ok, "endpoints failed: {err}\n{out}");
    let lines: Vec<&str> = out.lines().collect();
    let header: Vec<&str> = lines[0].split_whitespace().collect();
    assert_eq!(
        header,
        [
            "METHOD",
            "TEMPLATE",
            "CAPABILITY",
            "STATE",
            "REQUESTS",
            "RATE/S",
            "NEW%",
            "ROUTE"
        ],
        "{out}"
    );
    assert!(lines.last().is_some_and(|l| l.starts_with("progress: ")), "{out}");
    let table: Vec<Vec<&str>> = lines[1..lines.len() - 1]
        .iter()
        .map(|l| l.split_whitespace().collect())
        .collect();
    // SHOP_MAP lists the legacy endpoints busiest first, each count different.
    let want: Vec<(&str, &str, &str, &str, String)> = SHOP_MAP
        .iter()
        .filter(|r| r.3 == "legacy")
        .map(|(m, t, c, s, n)| (*m, *t, *c, *s, n.to_string()))
        .collect();
    let got: Vec<(&str, &str, &str, &str, String)> = table
        .iter()
        .map(|r| (r[0], r[1], r[2], r[3], r[4].to_string()))
        .collect();
    assert_eq!(got, want, "{out}");
    let user = table
        .iter()
        .find(|r| r[1] == "/api/users/{id}")
        .unwrap_or_else(|| panic!("{out}"));
    assert_eq!(
        (user[0], user[2], user[3], user[4], user[6], user[7]),
        ("GET", "users", "legacy", "10", "0%", "-"),
        "{out}"
    );
    let catalog = table
        .iter()
        .find(|r| r[1] == "/api/catalog/products")
        .unwrap_or_else(|| panic!("{out}"));
    assert_eq!(catalog[7], "catalog", "{out}");
}
