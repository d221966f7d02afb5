//! The fleet's autopilot: `strangler autopilot --prometheus` decides from a real Prometheus's sums
//! over two proxy replicas that read the same rules file, and edits that file.

mod common;

use std::process::Stdio;
use std::time::{Duration, Instant};

use common::echo;
use common::proxy::{strangler, Proxy};
use common::tools::Killed;
use strangler::rules::canary_bucket;

/// Users whose sticky bucket puts them on the new side at 50% (`new`), or on the monolith.
fn users(new: bool, n: usize) -> Vec<String> {
    (0..)
        .map(|i| format!("fleet-user-{i}"))
        .filter(|u| (canary_bucket(u.as_bytes()) < 5000) == new)
        .take(n)
        .collect()
}

async fn send(proxy: &Proxy, users: &[String]) {
    let client = reqwest::Client::new();
    for u in users {
        let resp = client
            .get(proxy.url("/live/item"))
            .header("x-user-id", u)
            .send()
            .await
            .expect("request");
        assert!(resp.status().is_success(), "{}", resp.status());
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_controller_promotes_on_the_sum_of_both_replicas() {
    let Some(prometheus) = common::tools::require("prometheus") else {
        return;
    };
    let mono = echo::start("monolith").await;
    let svc = echo::start("svc").await;
    let dir = tempfile::tempdir().unwrap();
    let rules = dir.path().join("rules.yaml");
    let text = format!(
        "# the fleet's rules\n\
         legacy: monolith\n\
         autopilot: {{ controller: external, interval: 300ms }}\n\
         upstreams:\n  monolith: {{ url: \"http://{mono}\" }}\n  svc: {{ url: \"http://{svc}\" }}\n\
         routes:\n\
         \x20 - name: live\n\
         \x20   match: {{ prefix: /live }}\n\
         \x20   mode: canary\n\
         \x20   service: svc\n\
         \x20   canary: {{ percent: 50, sticky: \"header:x-user-id\" }}\n\
         \x20   rollout:\n\
         \x20     steps: [50, migrated]\n\
         \x20     hold: 1s\n\
         \x20     gates: {{ min_requests: 60, p99: 100x }}\n"
    );
    std::fs::write(&rules, &text).unwrap();
    // Two replicas on the one file (each with its own directory for its log, as on two hosts).
    let a = Proxy::start_file(tempfile::tempdir().unwrap(), rules.clone(), &[]).await;
    let b = Proxy::start_file(tempfile::tempdir().unwrap(), rules.clone(), &[]).await;

    let prom = common::prometheus::start(&prometheus, dir.path(), &[a.admin, b.admin], None).await;
    let api = prom.api.clone();
    let log = std::fs::File::create(dir.path().join("controller.log")).unwrap();
    let _controller = Killed(
        strangler()
            .args(["autopilot", "--prometheus", &api, "--config"])
            .arg(&rules)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap(),
    );
    let controller_log = || std::fs::read_to_string(dir.path().join("controller.log")).unwrap_or_default();

    // What Prometheus holds now: the sum of a query over both replicas.
    let total = |side: &'static str| {
        let api = api.clone();
        async move {
            let q = format!("sum(strangler_requests_total{{route=\"live\",side=\"{side}\"}})");
            let url = reqwest::Url::parse_with_params(&format!("{api}/api/v1/query"), &[("query", q)]).unwrap();
            let v: serde_json::Value = reqwest::get(url).await.unwrap().json().await.unwrap();
            v["data"]["result"][0]["value"][1]
                .as_str()
                .and_then(|s| s.parse::<f64>().ok())
                .unwrap_or(0.0)
        }
    };
    let scraped = |want: f64| async move {
        let deadline = Instant::now() + Duration::from_secs(30);
        while total("new").await < want {
            assert!(
                Instant::now() < deadline,
                "Prometheus never scraped {want} new-side requests"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    };

    // One replica alone: 40 requests on the new side, under the 60 the step needs.
    let (new, old) = (users(true, 80), users(false, 40));
    send(&a, &new[..40]).await;
    send(&a, &old[..20]).await;
    scraped(40.0).await;
    // Several decisions on those figures.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        std::fs::read_to_string(&rules).unwrap(),
        text,
        "one replica's 40 requests promoted the route; controller log:\n{}",
        controller_log()
    );

    // Both together: 80.
    send(&b, &new[40..]).await;
    send(&b, &old[20..]).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let now = std::fs::read_to_string(&rules).unwrap();
        if now.contains("    mode: migrated\n") {
            // Only the mode line changed.
            let changed: Vec<(&str, &str)> = text.lines().zip(now.lines()).filter(|(x, y)| x != y).collect();
            assert_eq!(changed, [("    mode: canary", "    mode: migrated")]);
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not promoted on the sum of both replicas; controller log:\n{}",
            controller_log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Both replicas pick the edit up.
    for replica in [&a, &b] {
        let deadline = Instant::now() + Duration::from_secs(10);
        while replica.admin_json("/api/autopilot").await["routes"][0]["mode"] != "migrated" {
            assert!(
                Instant::now() < deadline,
                "a replica did not reload the controller's edit"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let journal = std::fs::read_to_string(dir.path().join(".strangler/autopilot.jsonl")).unwrap();
    assert!(journal.contains("\"direction\":\"promote\""), "{journal}");
}
