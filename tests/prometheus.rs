//! A real Prometheus server scrapes the proxy while traffic runs. Every PromQL expression of the
//! Grafana dashboard and the alert rules is evaluated through Prometheus's HTTP API, those of the
//! Migration progress and Rollouts rows return data, the traffic-share panel shows the canary
//! split, the Rollouts panels show the autopilot's step and every move it made, and promtool
//! accepts the rules and the metrics.

mod common;

use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use common::proxy::{rules, Proxy};
use common::shop::start_shop;
use common::traffic::Traffic;
use serde_json::Value;

const ROUTES: &str = "  - { name: stock, match: { prefix: /api/inventory }, mode: canary, service: inventory, canary: { percent: 30, sticky: \"header:x-user-id\" } }\n\
                      \x20 - { name: orders-read, match: { path: \"/api/orders/{id}\", methods: [GET] }, mode: shadow, service: orders, shadow: { ignore: [\"$.served_at\"] }, rollout: { steps: [shadow, 50], hold: 1s, gates: { min_requests: 20, match_rate: 99%, p99: 100x } } }\n\
                      \x20 - { name: catalog, match: { prefix: /api/catalog }, mode: legacy }\n";

fn repo(path: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

/// Every `expr` in the Grafana dashboard, with the title of the row it sits in ("" above the
/// first row). A row panel has no targets; an open row's panels follow it, a collapsed row holds
/// them in its own `panels`.
fn dashboard_expressions() -> Vec<(String, String)> {
    fn walk(panels: &Value, row: &mut String, out: &mut Vec<(String, String)>) {
        for p in panels.as_array().unwrap() {
            let title = p["title"].as_str().unwrap_or("");
            if p["type"] == "row" {
                *row = title.to_string();
                walk(&p["panels"], row, out);
                continue;
            }
            let targets = p["targets"]
                .as_array()
                .unwrap_or_else(|| panic!("panel {title:?} has no targets"));
            for t in targets {
                let expr = t["expr"]
                    .as_str()
                    .unwrap_or_else(|| panic!("panel {title:?}: a target without expr"));
                out.push((row.clone(), expr.to_string()));
            }
        }
    }
    let dash: Value =
        serde_json::from_str(&std::fs::read_to_string(repo("dashboards/strangler.json")).unwrap()).unwrap();
    let mut out = Vec::new();
    walk(&dash["panels"], &mut String::new(), &mut out);
    out
}

/// Every `expr` in the Grafana dashboard and the alert rules.
fn expressions() -> Vec<String> {
    let mut out: Vec<String> = dashboard_expressions().into_iter().map(|(_, e)| e).collect();
    let alerts: Value =
        serde_saphyr::from_str(&std::fs::read_to_string(repo("dashboards/alerts.yaml")).unwrap()).unwrap();
    for group in alerts["groups"].as_array().unwrap() {
        for rule in group["rules"].as_array().unwrap() {
            out.push(rule["expr"].as_str().unwrap().trim().to_string());
        }
    }
    out
}

#[test]
fn promtool_accepts_the_alert_rules() {
    let Some(promtool) = common::tools::require("promtool") else {
        return;
    };
    let out = Command::new(promtool)
        .args(["check", "rules"])
        .arg(repo("dashboards/alerts.yaml"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn prometheus_evaluates_every_dashboard_and_alert_expression() {
    let (Some(prometheus), Some(promtool)) = (common::tools::require("prometheus"), common::tools::require("promtool"))
    else {
        return;
    };
    let shop = start_shop().await;
    let ups = [
        ("monolith", shop.monolith),
        ("inventory", shop.inventory),
        ("orders", shop.orders),
    ];
    // The autopilot decides often, so orders-read (whose answers match) is promoted within seconds.
    let proxy = Arc::new(
        Proxy::start(&format!(
            "autopilot: {{ enabled: true, interval: 100ms }}\n{}",
            rules(&ups, ROUTES)
        ))
        .await,
    );

    // promtool check metrics reports nothing on our exposition.
    let text = proxy.metrics().await;
    let mut check = Command::new(&promtool)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    check.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    let out = check.wait_with_output().unwrap();
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && report.trim().is_empty(),
        "promtool check metrics: {report}"
    );

    let dir = tempfile::tempdir().unwrap();
    let alerts = repo("dashboards/alerts.yaml");
    let prom = common::prometheus::start(&prometheus, dir.path(), &[proxy.admin], Some(&alerts)).await;
    let api = prom.api.clone();
    let client = reqwest::Client::new();

    // Traffic for a while, many users on the canary route.
    let traffic = Traffic::start(proxy.clone(), Duration::ZERO, |i| match i % 5 {
        0 => format!("/api/orders/{}", i % 100 + 1),
        1 => "/api/catalog/products/3".to_string(),
        _ => format!("/api/inventory/SKU-{:04}", i % 200 + 1),
    });
    tokio::time::sleep(Duration::from_secs(12)).await;
    traffic.stop().await;

    let query = |expr: String| {
        let (client, api) = (client.clone(), api.clone());
        async move {
            let url =
                reqwest::Url::parse_with_params(&format!("{api}/api/v1/query"), &[("query", expr.as_str())]).unwrap();
            let v: Value = client.get(url).send().await.unwrap().json().await.unwrap();
            (expr, v)
        }
    };
    for expr in expressions() {
        let (expr, v) = query(expr).await;
        assert_eq!(v["status"], "success", "{expr}: {v}");
    }
    // The migration map's panels have data once the traffic is folded, the rollouts' once the
    // autopilot has judged and moved: a misspelt metric or label would evaluate too, to nothing.
    for (row, least) in [("Migration progress", 4), ("Rollouts", 3)] {
        let exprs: Vec<String> = dashboard_expressions()
            .into_iter()
            .filter(|(r, _)| r == row)
            .map(|(_, e)| e)
            .collect();
        assert!(exprs.len() >= least, "the {row} row: {exprs:?}");
        for expr in exprs {
            let (expr, v) = query(expr).await;
            let series = v["data"]["result"].as_array().map_or(0, Vec::len);
            assert!(series > 0, "{expr} has no data: {v}");
        }
    }

    // What the proxy itself counted on the canary route, by side.
    let own = proxy.metrics().await;
    let count = |side: &str| -> f64 {
        own.lines()
            .filter(|l| l.starts_with("strangler_requests_total{") && l.contains("route=\"stock\""))
            .filter(|l| l.contains(&format!("side=\"{side}\"")))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    };
    let (new, legacy) = (count("new"), count("legacy"));
    assert!(
        new > 0.0 && legacy > 0.0,
        "the canary route served both sides: {new} new, {legacy} legacy"
    );
    let own_share = new / (new + legacy);
    // Prometheus scrapes every second: wait for a scrape after the last request.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let share_of = |v: &Value| {
        v["data"]["result"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["metric"]["route"] == "stock")
            .and_then(|r| r["value"][1].as_str())
            .and_then(|s| s.parse::<f64>().ok())
            .unwrap_or_else(|| panic!("no traffic share for the canary route: {v}"))
    };
    // The counters as scraped are exactly the proxy's own.
    let (_, v) = query(
        "sum by (route) (strangler_requests_total{side=\"new\"}) / sum by (route) (strangler_requests_total)".into(),
    )
    .await;
    let scraped = share_of(&v);
    assert!(
        (scraped - own_share).abs() < 1e-9,
        "Prometheus has the canary route's share at {scraped}, the proxy counted {own_share} ({new} new, {legacy} legacy)"
    );
    // The dashboard's own per-route share panel agrees with them (its rate's extrapolation moves
    // it a little).
    let dash: Value =
        serde_json::from_str(&std::fs::read_to_string(repo("dashboards/strangler.json")).unwrap()).unwrap();
    let panel = dash["panels"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["title"] == "Traffic share on the new service, per route")
        .expect("the dashboard has a per-route traffic share panel");
    let (_, v) = query(panel["targets"][0]["expr"].as_str().unwrap().to_string()).await;
    let rated = share_of(&v);
    assert!(
        (rated - own_share).abs() < 0.05,
        "the rate of the canary route's share is {rated}, the proxy counted {own_share}"
    );

    // The autopilot promoted orders-read to its last step, and the Rollouts panels agree with the
    // proxy: the step it is at, and each of its moves (a counter born at 1 by its first move
    // counts too, which increase() alone would read as 0).
    let autopilot = proxy.admin_json("/api/autopilot").await;
    assert!(
        autopilot["routes"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["route"] == "orders-read" && r["step"] == "50"),
        "orders-read was not promoted: {autopilot}"
    );
    let own_sum = |metric: &str| -> f64 {
        own.lines()
            .filter(|l| l.starts_with(&format!("{metric}{{")) && l.contains("route=\"orders-read\""))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    };
    let (own_step, own_moves) = (
        own_sum("strangler_rollout_step"),
        own_sum("strangler_rollout_transitions_total"),
    );
    assert!(
        own_step == 1.0 && own_moves >= 1.0,
        "the proxy counted step {own_step} and {own_moves} moves for orders-read"
    );
    let panel_sum = |title: &'static str| {
        let expr = dash["panels"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["title"] == title)
            .unwrap_or_else(|| panic!("the dashboard has a panel {title:?}"))["targets"][0]["expr"]
            .as_str()
            .unwrap()
            .to_string();
        let query = &query;
        async move {
            let (expr, v) = query(expr).await;
            let sum: f64 = v["data"]["result"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|r| r["metric"]["route"] == "orders-read")
                .filter_map(|r| r["value"][1].as_str()?.parse::<f64>().ok())
                .sum();
            (expr, sum)
        }
    };
    let (expr, step) = panel_sum("Rollout step per route").await;
    assert_eq!(step, own_step, "{expr}: orders-read's step");
    let (expr, moves) = panel_sum("Rollout transitions by direction and reason (15 min)").await;
    assert_eq!(moves, own_moves, "{expr}: orders-read's moves");
}
