//! Upstreams found by DNS, against a real DNS server (dnsmasq) on a loopback port that the rules
//! point the resolver at. The test changes the records, as a Kubernetes Service's pods come and
//! go, and checks that traffic follows with no failed request; then stops the server, and the
//! last good addresses keep serving.

mod common;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::echo;
use common::proxy::{free_port, metric, Proxy};
use common::tools::require_daemon;

const NAME: &str = "orders.strangler.test";

/// dnsmasq answering from a hosts file only, on 127.0.0.1:`port`, TTL 0.
struct Dns {
    child: Child,
    hosts: PathBuf,
}

impl Dns {
    fn start(bin: &Path, dir: &Path, port: u16, addrs: &[&str]) -> Dns {
        let hosts = dir.join("hosts");
        let dns = Dns {
            child: Command::new(bin)
                .args(["--keep-in-foreground", "--no-resolv", "--no-hosts", "--bind-interfaces"])
                .args(["--listen-address=127.0.0.1", "--local-ttl=0", "--pid-file="])
                .arg(format!("--port={port}"))
                .arg(format!("--addn-hosts={}", hosts.display()))
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("start dnsmasq"),
            hosts,
        };
        dns.set(addrs, false);
        dns
    }

    /// Answer `NAME` with these addresses (SIGHUP makes dnsmasq read the file again).
    fn set(&self, addrs: &[&str], reload: bool) {
        let text: String = addrs.iter().map(|a| format!("{a} {NAME}\n")).collect();
        std::fs::write(&self.hosts, text).unwrap();
        if reload {
            let ok = Command::new("kill")
                .args(["-HUP", &self.child.id().to_string()])
                .status()
                .unwrap()
                .success();
            assert!(ok, "SIGHUP to dnsmasq");
        }
    }
}

impl Drop for Dns {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Send requests until `done` says the servers seen in the last `window` answers are what it
/// wants, or 15 s pass. Every answer must be a 200 from a new-side server (no fallback).
async fn until(proxy: &Proxy, window: usize, done: impl Fn(&BTreeSet<String>) -> bool) -> BTreeSet<String> {
    let client = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut recent: Vec<String> = Vec::new();
    let mut sent = 0;
    loop {
        let r = client.get(proxy.url("/api/orders/1")).send().await.expect("request");
        sent += 1;
        assert_eq!(r.status(), 200, "request {sent} failed");
        assert!(
            r.headers().get("x-strangler-fallback").is_none(),
            "request {sent} fell back"
        );
        let body: serde_json::Value = r.json().await.unwrap();
        recent.push(body["server"].as_str().unwrap().to_string());
        let seen: BTreeSet<String> = recent.iter().rev().take(window).cloned().collect();
        if recent.len() >= window && done(&seen) {
            return seen;
        }
        assert!(
            Instant::now() < deadline,
            "after {sent} requests the last {window} went to {seen:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn traffic_follows_the_records_and_survives_a_dns_outage() {
    let Some(dnsmasq) = require_daemon("dnsmasq") else {
        return;
    };
    // Two pods of one service, on two loopback addresses and the same port.
    let a = echo::start_at("pod-a", "127.0.0.2:0".parse().unwrap()).await;
    let _pod_b = echo::start_at("pod-b", SocketAddr::new("127.0.0.3".parse().unwrap(), a.port())).await;
    let monolith = echo::start("monolith").await;

    let dir = tempfile::tempdir().unwrap();
    // dnsmasq may drop to another user; it must still read the hosts file when told to.
    std::fs::set_permissions(dir.path(), std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let dns_port = free_port();
    let dns = Dns::start(&dnsmasq, dir.path(), dns_port, &["127.0.0.2"]);

    let rules_dir = tempfile::tempdir().unwrap();
    let rules = rules_dir.path().join("rules.yaml");
    std::fs::write(
        &rules,
        format!(
            "legacy: monolith\n\
             dns: {{ servers: [\"127.0.0.1:{dns_port}\"] }}\n\
             upstreams:\n\
             \x20 monolith: {{ url: \"http://{monolith}\" }}\n\
             \x20 orders: {{ url: \"http://{NAME}:{}\", dns_refresh: 200ms }}\n\
             routes:\n\
             \x20 - {{ name: orders, match: {{ prefix: /api/orders }}, mode: migrated, service: orders }}\n",
            a.port()
        ),
    )
    .unwrap();
    let proxy = Proxy::start_file(rules_dir, rules, &[]).await;

    // The name resolved when the rules were put in force: the first request already goes there.
    until(&proxy, 5, |seen| seen.len() == 1 && seen.contains("pod-a")).await;

    // A second pod: both take turns.
    dns.set(&["127.0.0.2", "127.0.0.3"], true);
    until(&proxy, 10, |seen| seen.contains("pod-a") && seen.contains("pod-b")).await;
    let m = proxy
        .metrics_with(&["strangler_upstream_addresses{health=\"healthy\",upstream=\"orders\"} 2"])
        .await;
    assert_eq!(
        metric(
            &m,
            "strangler_upstream_addresses{health=\"healthy\",upstream=\"orders\"}"
        ),
        2,
        "{m}"
    );

    // The first pod goes away: traffic leaves it.
    dns.set(&["127.0.0.3"], true);
    until(&proxy, 20, |seen| seen.len() == 1 && seen.contains("pod-b")).await;

    // The DNS server goes down: the last good address keeps serving, and the failures are counted.
    drop(dns);
    let m = proxy
        .metrics_with(&["strangler_dns_lookups_total{result=\"failed\",upstream=\"orders\"}"])
        .await;
    assert!(
        metric(&m, "strangler_dns_lookups_total{result=\"failed\",upstream=\"orders\"}") >= 1,
        "{m}"
    );
    // The two changes above were each seen by a lookup.
    assert!(
        metric(&m, "strangler_dns_lookups_total{result=\"ok\",upstream=\"orders\"}") >= 2,
        "{m}"
    );
    until(&proxy, 20, |seen| seen.len() == 1 && seen.contains("pod-b")).await;
}
