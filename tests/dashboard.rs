//! The dashboard page in a real browser (Debian's Chromium, headless) while demo-like traffic runs
//! on the repo's rules.yaml: every route of the demo rules shows with non-zero figures, the
//! what's-left section has a row per capability and per busy legacy endpoint as `/api/endpoints`
//! has them, the rollouts section shows each rollout's current step and what holds it back (the
//! demo's orders route paused in shadow by data drift) and the move in its timeline as
//! `/api/autopilot` has them, no script error occurs, the page fits a 1280 px wide window without
//! scrolling sideways, and a screenshot at that size is saved to target/test-artifacts/dashboard.png.
//! With the autopilot off, the rollouts section says so in one line. A route's mismatches, opened
//! by `/#mismatches=ROUTE`, link to their traces through `tracing.link`.

mod common;

use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::proxy::Proxy;
use common::shop::start_shop;
use common::traffic::Traffic;

/// The repo's own rules.yaml (the demo's), pointed at this test's shop.
fn demo_rules(shop: &common::shop::Shop) -> String {
    let text = std::fs::read_to_string(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("rules.yaml")).unwrap();
    text.replace("http://127.0.0.1:8000", &format!("http://{}", shop.monolith))
        .replace("http://127.0.0.1:8101", &format!("http://{}", shop.inventory))
        .replace("http://127.0.0.1:8102", &format!("http://{}", shop.orders))
}

/// Every route of the demo rules, by name.
const DEMO_ROUTES: [&str; 7] = [
    "catalog",
    "payments",
    "inventory-read",
    "inventory-reserve",
    "orders-read",
    "user-orders",
    "orders-create",
];

/// The window the page must fit: a common laptop screen.
const WINDOW: (u32, u32) = (1280, 800);

fn chromium(bin: &std::path::Path, profile: &std::path::Path) -> Command {
    let mut c = Command::new(bin);
    c.args([
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--virtual-time-budget=8000",
    ])
    .arg(format!("--user-data-dir={}", profile.display()));
    c
}

#[tokio::test(flavor = "multi_thread")]
async fn the_dashboard_shows_every_route_in_a_real_browser() {
    let Some(bin) = common::tools::require("chromium") else {
        return;
    };
    let shop = start_shop().await;
    let proxy = Arc::new(Proxy::start(&demo_rules(&shop)).await);

    // The write routes: a few reservations and v2 orders, as the demo's traffic sends.
    let client = reqwest::Client::new();
    for i in 0..20 {
        let user = format!("user-{i}");
        let r = client
            .post(proxy.url(&format!("/api/inventory/SKU-{:04}/reservations", i + 1)))
            .header("x-user-id", &user)
            .json(&serde_json::json!({"quantity": 1}))
            .send()
            .await
            .unwrap();
        assert!(!r.status().is_server_error(), "{}", r.status()); // 409: that SKU is out of stock
        let order =
            serde_json::json!({"user_id": i % 50 + 1, "items": [{"sku": format!("SKU-{:04}", i + 30), "quantity": 1}]});
        let r = client
            .post(proxy.url("/api/orders"))
            .header("x-api-version", "2")
            .header("x-user-id", &user)
            .json(&order)
            .send()
            .await
            .unwrap();
        assert!(!r.status().is_server_error(), "{}", r.status()); // 409: that SKU is out of stock
    }
    // Data drift, as in the demo: orders paid through the monolith (payments stay on it) are paid
    // there only, so the orders service's answers for them differ and orders-read stays in shadow.
    let mut paid = 0;
    for order in (1..=100).step_by(3) {
        let r = client
            .post(proxy.url("/api/payments"))
            .json(&serde_json::json!({"order_id": order}))
            .send()
            .await
            .unwrap();
        assert!(!r.status().is_server_error(), "{}", r.status()); // 409: already paid in the seed
        paid += u32::from(r.status().is_success());
    }
    assert!(paid >= 5, "only {paid} orders were paid: too little drift");

    // Steady traffic over every route while the browser looks.
    let traffic = Traffic::start(proxy.clone(), Duration::from_millis(5), |i| match i % 5 {
        0 => "/api/catalog/products?page=1".to_string(),
        1 => format!("/api/inventory/SKU-{:04}", i % 200 + 1),
        2 => format!("/api/orders/{}", i % 100 + 1),
        3 => format!("/api/users/{}/orders", i % 50 + 1),
        _ => format!("/api/payments/order/{}", i % 100 + 1),
    });
    tokio::time::sleep(Duration::from_secs(2)).await;
    // The migration map folds once a second: wait until every endpoint of that traffic is in it
    // (two reads a fold apart agree), so the page and the API are read from the same map.
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut before = whats_left(&proxy).await;
    loop {
        tokio::time::sleep(Duration::from_millis(1200)).await;
        let now = whats_left(&proxy).await;
        let settled = now.same_as(&before) && !now.capabilities.is_empty() && !now.legacy.is_empty();
        before = now;
        if settled {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the migration map did not settle: {before:?}"
        );
    }

    // The autopilot sees the drift: orders-read is rolled back to its first step and paused.
    let deadline = Instant::now() + Duration::from_secs(30);
    let drifted = loop {
        let v = proxy.admin_json("/api/autopilot").await;
        let orders = rollout(&v, "orders-read");
        if orders["paused"] == true
            && orders["status"]
                .as_str()
                .is_some_and(|s| s.starts_with("paused: match rate"))
        {
            break v;
        }
        assert!(
            Instant::now() < deadline,
            "orders-read was not paused by its drift: {v}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };

    let profile = tempfile::tempdir().unwrap();
    let url = proxy.admin_url("/");
    let dom = {
        let mut c = chromium(&bin, profile.path());
        c.args([&format!("--window-size={},{}", WINDOW.0, WINDOW.1), "--dump-dom", &url]);
        tokio::task::spawn_blocking(move || c.output())
            .await
            .unwrap()
            .expect("run chromium")
    };
    let html = String::from_utf8_lossy(&dom.stdout).to_string();
    assert!(
        dom.status.success() && !html.is_empty(),
        "chromium failed: {}",
        String::from_utf8_lossy(&dom.stderr)
    );

    let artifacts = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("../test-artifacts");
    std::fs::create_dir_all(&artifacts).unwrap();
    let shot = artifacts.join("dashboard.png");
    let png = {
        let mut c = chromium(&bin, profile.path());
        c.args([
            &format!("--window-size={},{}", WINDOW.0, WINDOW.1),
            &format!("--screenshot={}", shot.display()),
            &url,
        ]);
        tokio::task::spawn_blocking(move || c.output())
            .await
            .unwrap()
            .expect("run chromium")
    };
    traffic.stop().await;

    assert!(
        html.contains("data-js-errors=\"0\""),
        "a script error on the page:\n{html}"
    );
    let refreshes: u32 = attr(&html, "data-refreshes").and_then(|v| v.parse().ok()).unwrap_or(0);
    assert!(refreshes >= 1, "the page never loaded its data:\n{html}");
    for route in DEMO_ROUTES {
        let row = html
            .find(&format!("data-route=\"{route}\""))
            .unwrap_or_else(|| panic!("no row for {route}:\n{html}"));
        let requests: u64 = attr(&html[row..], "data-requests")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        assert!(requests > 0, "{route} shows no traffic");
    }
    assert!(html.contains(" of 7"), "migration progress is shown");

    // What's left: a row per capability and one per busy legacy endpoint, as the API has them.
    let left = whats_left(&proxy).await;
    let count = |name: &str| -> usize {
        attr(&html, name)
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("the page did not report {name}:\n{html}"))
    };
    assert_eq!(
        count("data-left-capabilities"),
        left.capabilities.len(),
        "capability rows on the page, against /api/endpoints's {:?}",
        left.capabilities
    );
    assert_eq!(
        count("data-left-legacy"),
        left.legacy.len().min(10),
        "legacy endpoint rows on the page, against /api/endpoints's {:?}",
        left.legacy
    );
    for capability in &left.capabilities {
        assert!(
            html.contains(&format!("data-capability=\"{capability}\"")),
            "no row for capability {capability}:\n{html}"
        );
    }
    for endpoint in left.legacy.iter().take(10) {
        assert!(
            html.contains(&format!("data-endpoint=\"{endpoint}\"")),
            "no row for legacy endpoint {endpoint}:\n{html}"
        );
    }

    // Rollouts: a card per route with a rollout, its current step marked, the verdict that holds
    // it back and the breached gate, as /api/autopilot has them; the move in the timeline.
    let autopilot = proxy.admin_json("/api/autopilot").await;
    let routes = autopilot["routes"].as_array().unwrap();
    assert_eq!(
        attr(&html, "data-rollouts"),
        Some(routes.len().to_string().as_str()),
        "rollout cards on the page, against /api/autopilot's {autopilot}"
    );
    for r in routes {
        let name = r["route"].as_str().unwrap();
        let card = between(
            &html,
            &format!("data-rollout=\"{name}\""),
            &["data-rollout=\"", "id=\"rollout-timeline\""],
        )
        .unwrap_or_else(|| panic!("no rollout card for {name}:\n{html}"));
        let current = between(card, "aria-current=\"step\">", &["<"])
            .unwrap_or_else(|| panic!("no current step for {name}:\n{card}"));
        assert_eq!(current, step_label(&r["step"]), "{name}'s current step, against {r}");
    }
    let orders = rollout(&autopilot, "orders-read");
    assert_eq!(orders["step"], "shadow", "{orders}");
    let status = orders["status"].as_str().unwrap();
    assert_eq!(
        status,
        rollout(&drifted, "orders-read")["status"],
        "orders-read's verdict moved while the browser looked"
    );
    let card = between(
        &html,
        "data-rollout=\"orders-read\"",
        &["data-rollout=\"", "id=\"rollout-timeline\""],
    )
    .unwrap();
    assert!(
        card.contains("data-paused=\"true\"") && card.contains(&format!(">{}<", escape(status))),
        "the page does not say why orders-read is held back ({status:?}):\n{card}"
    );
    let gate =
        between(card, "data-gate=\"match_rate\"", &["</tr>"]).unwrap_or_else(|| panic!("no match_rate gate:\n{card}"));
    assert!(
        gate.contains("holds it back"),
        "the breached gate is not marked:\n{gate}"
    );

    let transitions = autopilot["transitions"].as_array().unwrap();
    let shown: usize = attr(&html, "data-transitions")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    assert!(
        shown >= 1 && shown <= transitions.len(),
        "{shown} transitions on the page, against /api/autopilot's {transitions:?}"
    );
    let moved = transitions
        .iter()
        .find(|t| t["route"] == "orders-read")
        .unwrap_or_else(|| panic!("no move of orders-read in /api/autopilot: {autopilot}"));
    let row = between(
        &html,
        &format!(
            "data-transition=\"orders-read {}\"",
            moved["direction"].as_str().unwrap()
        ),
        &["</tr>"],
    )
    .unwrap_or_else(|| panic!("orders-read's move is not in the timeline:\n{html}"));
    for text in [
        format!("{} → {}", step_label(&moved["from"]), step_label(&moved["to"])),
        moved["direction"].as_str().unwrap().to_string(),
        moved["reason"].as_str().unwrap().to_string(),
        moved["detail"].as_str().unwrap().to_string(),
    ] {
        assert!(
            row.contains(&format!(">{}<", escape(&text))),
            "the timeline row lacks {text:?}:\n{row}"
        );
    }

    // No sideways scrolling, and no column of the route table past the window's edge. The page
    // writes its layout, as the browser computed it, onto <body> after each refresh.
    let px = |name: &str| -> u32 {
        attr(&html, name)
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("the page did not report {name}:\n{html}"))
    };
    let (inner, scroll, table, left, rollouts) = (
        px("data-inner-width"),
        px("data-scroll-width"),
        px("data-table-right"),
        px("data-left-right"),
        px("data-rollouts-right"),
    );
    assert_eq!(inner, WINDOW.0, "the browser window is {} px wide", WINDOW.0);
    assert!(
        scroll <= inner,
        "the page scrolls sideways at {inner} px: it is {scroll} px wide (screenshot: {})",
        shot.display()
    );
    assert!(
        table <= inner,
        "the route table ends at {table} px, past the {inner} px window (screenshot: {})",
        shot.display()
    );
    assert!(
        left <= inner,
        "the what's-left section ends at {left} px, past the {inner} px window (screenshot: {})",
        shot.display()
    );
    assert!(
        rollouts <= inner,
        "the rollouts section ends at {rollouts} px, past the {inner} px window (screenshot: {})",
        shot.display()
    );
    assert!(
        png.status.success() && std::fs::metadata(&shot).map(|m| m.len()).unwrap_or(0) > 10_000,
        "screenshot at {}",
        shot.display()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn with_the_autopilot_off_the_rollouts_section_says_so_in_one_line() {
    let Some(bin) = common::tools::require("chromium") else {
        return;
    };
    let shop = start_shop().await;
    let proxy = Proxy::start(&format!("{}autopilot: {{ enabled: false }}\n", demo_rules(&shop))).await;
    let autopilot = proxy.admin_json("/api/autopilot").await;
    assert_eq!(autopilot["enabled"], false, "{autopilot}");
    let rollouts = autopilot["routes"].as_array().unwrap().len();
    assert!(rollouts >= 2, "the demo rules have rollouts: {autopilot}");

    let html = page(&bin, &proxy.admin_url("/")).await;
    assert!(
        attr(&html, "data-refreshes").is_some_and(|n| n != "0"),
        "the page never loaded its data:\n{html}"
    );
    let line = format!(
        "the autopilot is off (autopilot.enabled: false): {rollouts} routes with a rollout stay where rules.yaml puts them"
    );
    assert!(
        html.contains(&format!("id=\"rollouts-summary\">{}<", escape(&line))),
        "no one-line word that the autopilot is off:\n{html}"
    );
    assert!(
        attr(&html, "data-rollouts") == Some("0") && !html.contains("data-rollout=\""),
        "rollout cards for an autopilot that does not act:\n{html}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_mismatch_links_to_its_trace() {
    let Some(bin) = common::tools::require("chromium") else {
        return;
    };
    // Two echo servers that name themselves: every copy mismatches.
    let mono = common::echo::start("monolith").await;
    let svc = common::echo::start("svc").await;
    let text = format!(
        "tracing: {{ link: \"https://jaeger.example/trace/{{trace_id}}\" }}\n{}",
        common::proxy::rules(
            &[("monolith", mono), ("svc", svc)],
            "  - name: orders\n    match: { prefix: /api/orders }\n    mode: shadow\n    service: svc\n",
        )
    );
    let proxy = Proxy::start(&text).await;
    let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let r = reqwest::Client::new()
        .get(proxy.url("/api/orders/1"))
        .header("traceparent", format!("00-{trace}-00f067aa0ba902b7-01"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let deadline = Instant::now() + Duration::from_secs(10);
    while proxy.admin_json("/api/mismatches?route=orders").await["mismatches"][0].is_null() {
        assert!(Instant::now() < deadline, "no mismatch recorded");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let html = page(&bin, &proxy.admin_url("/#mismatches=orders")).await;
    assert!(
        html.contains(&format!("href=\"https://jaeger.example/trace/{trace}\""))
            && html.contains(&format!("trace {trace}")),
        "no link to the mismatch's trace:\n{html}"
    );
}

/// The page at `url` as Chromium renders it (its DOM after the scripts ran), with no script error.
async fn page(bin: &std::path::Path, url: &str) -> String {
    let profile = tempfile::tempdir().unwrap();
    let mut c = chromium(bin, profile.path());
    c.args([&format!("--window-size={},{}", WINDOW.0, WINDOW.1), "--dump-dom", url]);
    let dom = tokio::task::spawn_blocking(move || c.output())
        .await
        .unwrap()
        .expect("run chromium");
    let html = String::from_utf8_lossy(&dom.stdout).to_string();
    assert!(
        html.contains("data-js-errors=\"0\""),
        "a script error on the page:\n{html}"
    );
    html
}

/// A route's entry in `GET /api/autopilot`.
fn rollout<'a>(autopilot: &'a serde_json::Value, route: &str) -> &'a serde_json::Value {
    autopilot["routes"]
        .as_array()
        .and_then(|rs| rs.iter().find(|r| r["route"] == route))
        .unwrap_or_else(|| panic!("no {route} in /api/autopilot: {autopilot}"))
}

/// A step as the page writes it: `shadow`, `25%`, `migrated`.
fn step_label(step: &serde_json::Value) -> String {
    let s = step.as_str().unwrap_or("off its steps");
    if s.parse::<f64>().is_ok() {
        format!("{s}%")
    } else {
        s.to_string()
    }
}

/// Text as the browser's serialized DOM writes it.
fn escape(text: &str) -> String {
    text.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

/// What follows the first `start` in `html`, up to the first of `ends` after it (or the end).
fn between<'a>(html: &'a str, start: &str, ends: &[&str]) -> Option<&'a str> {
    let from = html.find(start)? + start.len();
    let rest = &html[from..];
    let to = ends.iter().filter_map(|e| rest.find(e)).min().unwrap_or(rest.len());
    Some(&rest[..to])
}

/// What `/api/endpoints` says is left: every capability (by name), and the endpoints still in
/// state legacy (busiest first, as the page lists them).
#[derive(Debug)]
struct Left {
    capabilities: Vec<String>,
    legacy: Vec<String>,
}

async fn whats_left(proxy: &Proxy) -> Left {
    let map = proxy.admin_json("/api/endpoints?state=legacy").await;
    let mut capabilities: Vec<String> = map["progress"]["capabilities"]
        .as_object()
        .unwrap_or_else(|| panic!("no progress.capabilities: {map}"))
        .keys()
        .cloned()
        .collect();
    capabilities.sort();
    let legacy: Vec<String> = map["endpoints"]
        .as_array()
        .unwrap_or_else(|| panic!("no endpoints: {map}"))
        .iter()
        .map(|e| format!("{} {}", e["method"].as_str().unwrap(), e["template"].as_str().unwrap()))
        .collect();
    Left { capabilities, legacy }
}

impl Left {
    /// The same capabilities and legacy endpoints, in whatever order (equal traffic may swap two).
    fn same_as(&self, other: &Left) -> bool {
        let sorted = |v: &[String]| {
            let mut v = v.to_vec();
            v.sort();
            v
        };
        self.capabilities == other.capabilities && sorted(&self.legacy) == sorted(&other.legacy)
    }
}

/// The value of the first `name="..."` attribute in `html`.
fn attr<'a>(html: &'a str, name: &str) -> Option<&'a str> {
    let start = html.find(&format!("{name}=\""))? + name.len() + 2;
    html[start..].split('"').next()
}
