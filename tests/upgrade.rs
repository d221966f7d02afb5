//! Graceful binary upgrade: a new strangler takes the listening socket over from the running
//! one (`--upgrade`, then SIGQUIT to the old), and no client request fails on the way.

mod common;

use std::process::Stdio;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::proxy::{rules, strangler, Proxy};
use common::shop::start_shop;

#[tokio::test(flavor = "multi_thread")]
async fn a_new_binary_takes_over_without_failing_a_request() {
    let shop = start_shop().await;
    let route = |mode: &str| {
        let r = format!("  - {{ name: stock, match: {{ prefix: /api/inventory }}, {mode} }}\n");
        rules(&[("monolith", shop.monolith), ("inventory", shop.inventory)], &r)
    };
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("upgrade.sock");
    let old_rules = dir.path().join("old.yaml");
    let new_rules = dir.path().join("new.yaml");
    std::fs::write(&old_rules, route("mode: legacy")).unwrap();
    // The new process serves different rules, so a response says which process answered it.
    std::fs::write(&new_rules, route("mode: migrated, service: inventory")).unwrap();
    let sock_arg = sock.to_str().unwrap().to_string();
    let mut old = Proxy::start_file(dir, old_rules, &["--upgrade-sock", &sock_arg, "--grace-period", "1"]).await;

    let stop = Arc::new(AtomicBool::new(false));
    let (ok, new_seen) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let url = old.url("/api/inventory/SKU-0001");
    let mut clients = Vec::new();
    for _ in 0..2 {
        let (stop, ok, new_seen, url) = (stop.clone(), ok.clone(), new_seen.clone(), url.clone());
        clients.push(tokio::spawn(async move {
            let mut failures = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                // A fresh connection per request, so accepts cross over from the old process to the new.
                let client = reqwest::Client::builder().pool_max_idle_per_host(0).build().unwrap();
                match client.get(&url).send().await {
                    Ok(r) if r.status() == 200 => {
                        ok.fetch_add(1, Ordering::Relaxed);
                        if r.headers()["x-strangler-upstream"] == "inventory" {
                            new_seen.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    Ok(r) => failures.push(format!("status {}", r.status())),
                    Err(e) => failures.push(e.to_string()),
                }
            }
            failures
        }));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;

    let log = std::fs::File::create(sock.with_file_name("new.log")).unwrap();
    let mut new = strangler()
        .args([
            "run",
            "--threads",
            "2",
            "--upgrade",
            "--upgrade-sock",
            &sock_arg,
            "--config",
        ])
        .arg(&new_rules)
        .args(["--listen", &old.addr.to_string(), "--admin", &old.admin.to_string()])
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    // The new process waits on the upgrade socket; the old one hands its socket over on SIGQUIT.
    tokio::time::sleep(Duration::from_millis(300)).await;
    old.signal("QUIT");

    let deadline = Instant::now() + Duration::from_secs(20);
    while new_seen.load(Ordering::Relaxed) == 0 {
        let new_log = std::fs::read_to_string(sock.with_file_name("new.log")).unwrap_or_default();
        assert!(
            Instant::now() < deadline,
            "the new process never served; its log:\n{new_log}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let old_status = old
        .wait_exit(Duration::from_secs(20))
        .await
        .expect("the old process exits");
    tokio::time::sleep(Duration::from_millis(200)).await;
    stop.store(true, Ordering::Relaxed);
    let mut failures = Vec::new();
    for c in clients {
        failures.extend(c.await.unwrap());
    }
    let _ = new.kill();
    let _ = new.wait();
    assert!(old_status.success(), "old process exit: {old_status:?}");
    assert!(
        failures.is_empty(),
        "{} failed requests during the upgrade: {:?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );
    assert!(
        ok.load(Ordering::Relaxed) > new_seen.load(Ordering::Relaxed),
        "both processes served"
    );
}
