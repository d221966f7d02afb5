//! Consistent across replicas: three proxy processes on one rules file put each user on the same
//! side of a canary behind a round-robin HAProxy, all pick up a ConfigMap-style swap with the
//! same `strangler_config_info{hash}`, and a real Prometheus scraping the three sums their
//! traffic and fires `StranglerReplicasServeDifferentRules` only when one serves other rules.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::echo;
use common::proxy::{free_port, rules, Proxy};
use common::shop::{start_shop_marked, Shop};
use common::tools::Killed;
use futures_util::{stream, StreamExt};
use serde_json::Value;
use strangler::rules::canary_bucket;

/// Users sent through the balancer, and how many requests each sends.
const USERS: usize = 2_000;
const ROUNDS: usize = 3;

/// Users also asked of each replica directly.
const SAMPLE: usize = 150;

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

/// `strangler_config_info{hash}` as the proxy should show it: XXH3-64 of the file's bytes, 16
/// lowercase hex digits. Computed here, not with the crate's own function, so a change of
/// hash or format shows up.
fn file_hash(text: &str) -> String {
    format!("{:016x}", xxhash_rust::xxh3::xxh3_64(text.as_bytes()))
}

/// The hashes a replica reports in `strangler_config_info` (one, when all is well).
async fn reported_hashes(proxy: &Proxy) -> Vec<String> {
    proxy
        .metrics()
        .await
        .lines()
        .filter_map(|l| l.strip_prefix("strangler_config_info{hash=\""))
        .filter_map(|rest| Some(rest.split_once('"')?.0.to_string()))
        .collect()
}

/// Waits (bounded) until every replica reports exactly `hash`.
async fn until_all_report(replicas: &[&Proxy], hash: &str) {
    for (i, r) in replicas.iter().enumerate() {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let got = reported_hashes(r).await;
            if got == [hash] {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "replica {i} reports config hash {got:?}, want [{hash}]; its log:\n{}",
                r.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// Replaces the file at `path` in one rename, as an editor or a controller does.
fn replace_file(path: &Path, text: &str) {
    let tmp = path.with_extension("yaml.tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

fn canary_rules(shop: &Shop, percent: u32) -> String {
    rules(
        &[("monolith", shop.monolith), ("inventory", shop.inventory)],
        &format!(
            "  - name: stock\n    match: {{ path: \"/api/inventory/{{sku}}\", methods: [GET] }}\n    mode: canary\n    service: inventory\n    canary: {{ percent: {percent}, sticky: \"header:x-user-id\" }}\n"
        ),
    )
}

/// HAProxy on loopback, round robin over `servers`, naming the replica that answered in
/// `x-fleet-replica` (r0, r1, …): the balancer says who served, not the proxy under test.
async fn start_haproxy(haproxy: &Path, dir: &Path, servers: &[SocketAddr]) -> (Killed, SocketAddr) {
    for _attempt in 0..5 {
        let addr: SocketAddr = ([127, 0, 0, 1], free_port()).into();
        let mut cfg = format!(
            "global\n  maxconn 512\n\
             defaults\n  mode http\n  timeout connect 2s\n  timeout client 30s\n  timeout server 30s\n\
             frontend fleet\n  bind {addr}\n  default_backend replicas\n\
             backend replicas\n  balance roundrobin\n  http-response set-header x-fleet-replica %[srv_name]\n"
        );
        for (i, s) in servers.iter().enumerate() {
            cfg.push_str(&format!("  server r{i} {s}\n"));
        }
        let path = dir.join("haproxy.cfg");
        std::fs::write(&path, cfg).unwrap();
        let log = dir.join("haproxy.log");
        let mut child = Killed(
            Command::new(haproxy)
                .arg("-f")
                .arg(&path)
                .arg("-db")
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(&log).unwrap())
                .spawn()
                .expect("spawn haproxy"),
        );
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.0.try_wait() {
                break;
            }
            if tokio::net::TcpStream::connect(addr).await.is_ok() {
                return (child, addr);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // Lost a port race, or failed to start: say why and try again on another port.
        eprintln!(
            "haproxy did not start:\n{}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
    }
    panic!("haproxy did not start after 5 tries");
}

/// One answer to one user: who served it (the balancer's header, or the replica asked
/// directly) and whether the new service answered.
struct Seen {
    user: usize,
    replica: String,
    new: bool,
}

/// GET a stock item as user `replica-user-{i}` for each `i`, 16 at a time; `replica` names the
/// server when the balancer doesn't.
async fn ask(url: &str, users: impl Iterator<Item = usize>, replica: Option<&str>) -> Vec<Seen> {
    let client = reqwest::Client::new();
    stream::iter(users)
        .map(|user| {
            let client = client.clone();
            async move {
                let r = client
                    .get(url)
                    .header("x-user-id", format!("replica-user-{user}"))
                    .send()
                    .await
                    .expect("request");
                assert_eq!(r.status(), 200, "user {user}");
                let header = |n: &str| r.headers().get(n).map(|v| v.to_str().unwrap().to_string());
                let header_says_new = header("x-strangler-upstream").as_deref() == Some("inventory");
                let replica = match replica {
                    Some(name) => name.to_string(),
                    None => header("x-fleet-replica").expect("the balancer names the replica"),
                };
                let body: Value = r.json().await.expect("json");
                let new = body["answered_by"] == "inventory-service";
                assert_eq!(header_says_new, new, "the header names the side that answered");
                Seen { user, replica, new }
            }
        })
        .buffered(16)
        .collect()
        .await
}

#[tokio::test(flavor = "multi_thread")]
async fn the_canary_split_is_identical_on_every_replica() {
    let Some(haproxy) = common::tools::require_daemon("haproxy") else {
        return;
    };
    let shop = start_shop_marked().await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("rules.yaml");
    std::fs::write(&path, canary_rules(&shop, 30)).unwrap();
    // Three replicas on the one file, each with its own directory for its log.
    let mut replicas = Vec::new();
    for _ in 0..3 {
        replicas.push(Proxy::start_file(tempfile::tempdir().unwrap(), path.clone(), &[]).await);
    }
    let addrs: Vec<SocketAddr> = replicas.iter().map(|r| r.addr).collect();
    let (_haproxy, balancer) = start_haproxy(&haproxy, dir.path(), &addrs).await;

    // Each user asks once per round. With 16 requests in flight, which replica a user's next
    // request meets is all but random: about nine users in ten meet two replicas or more.
    let url = format!("http://{balancer}/api/inventory/SKU-0003");
    let mut seen = Vec::new();
    for _ in 0..ROUNDS {
        seen.extend(ask(&url, 0..USERS, None).await);
    }
    // And a sample of users straight to each replica.
    for (i, r) in replicas.iter().enumerate() {
        let name = format!("direct-{i}");
        seen.extend(ask(&r.url("/api/inventory/SKU-0003"), 0..SAMPLE, Some(&name)).await);
    }

    // For each user, the sides each replica put them on.
    let mut by_user: BTreeMap<usize, BTreeMap<&str, BTreeSet<bool>>> = BTreeMap::new();
    let mut per_replica: BTreeMap<&str, usize> = BTreeMap::new();
    for s in &seen {
        by_user
            .entry(s.user)
            .or_default()
            .entry(&s.replica)
            .or_default()
            .insert(s.new);
        *per_replica.entry(&s.replica).or_default() += 1;
    }
    let sides = |replicas: &BTreeMap<&str, BTreeSet<bool>>| -> BTreeSet<bool> {
        replicas.values().flatten().copied().collect()
    };
    // The balancer really spread the load, and users really met several replicas.
    for name in ["r0", "r1", "r2"] {
        let n = per_replica.get(name).copied().unwrap_or(0);
        assert!(
            n >= USERS * ROUNDS / 5,
            "replica {name} served {n} of {} requests: {per_replica:?}",
            USERS * ROUNDS
        );
    }
    let balanced = |replicas: &BTreeMap<&str, BTreeSet<bool>>| replicas.keys().filter(|r| r.starts_with('r')).count();
    let several = by_user.values().filter(|r| balanced(r) >= 2).count();
    let all_three = by_user.values().filter(|r| balanced(r) == 3).count();
    assert!(
        several >= USERS / 2,
        "only {several} of {USERS} users were served by two replicas or more through the balancer"
    );

    let split: Vec<String> = by_user
        .iter()
        .filter(|(_, replicas)| sides(replicas).len() > 1)
        .map(|(u, replicas)| format!("replica-user-{u} (new side by replica: {replicas:?})"))
        .collect();
    assert!(
        split.is_empty(),
        "{} of {USERS} users land on different sides depending on the replica ({several} met two \
         replicas or more, {all_three} all three), e.g. {:?}",
        split.len(),
        &split[..split.len().min(5)]
    );

    // The side is the documented sticky hash's, and the share is the configured one.
    let new_users: BTreeSet<usize> = by_user
        .iter()
        .filter(|(_, replicas)| sides(replicas).contains(&true))
        .map(|(u, _)| *u)
        .collect();
    let off_hash = (0..USERS)
        .filter(|u| (canary_bucket(format!("replica-user-{u}").as_bytes()) < 3_000) != new_users.contains(u))
        .count();
    assert_eq!(off_hash, 0, "users whose side is not the one their sticky bucket gives");
    let share = new_users.len() as f64 * 100.0 / USERS as f64;
    assert!(
        (27.0..=33.0).contains(&share),
        "30% ± 3 of {USERS} users on the new service, got {share:.2}%"
    );
    eprintln!(
        "{USERS} users, {} requests ({per_replica:?}); {several} users met two replicas or more, {all_three} users met all three replicas; {share:.2}% on the new side",
        seen.len()
    );
}

/// A rules file whose `stock` route is served by the monolith, or migrated to `svc`.
fn flip(mono: SocketAddr, svc: SocketAddr, migrated: bool) -> String {
    let route = if migrated {
        "  - { name: stock, match: { prefix: /api/inventory }, mode: migrated, service: svc }\n"
    } else {
        "  - { name: stock, match: { prefix: /api/inventory }, mode: legacy }\n"
    };
    rules(&[("monolith", mono), ("svc", svc)], route)
}

/// Which echo server answers `/api/inventory/SKU-0001` on this replica, by the proxy's header
/// and by the body (which must agree).
async fn served_by(client: &reqwest::Client, proxy: &Proxy) -> String {
    let r = client
        .get(proxy.url("/api/inventory/SKU-0001"))
        .send()
        .await
        .expect("request");
    assert_eq!(r.status(), 200);
    let header = r.headers()["x-strangler-upstream"].to_str().unwrap().to_string();
    let body: Value = r.json().await.expect("json");
    assert_eq!(body["server"], header.as_str(), "the header names who answered");
    header
}

/// The kubelet's layout for a ConfigMap mounted as a directory: rules.yaml -> ..data/rules.yaml,
/// ..data -> ..VERSION/.
fn configmap(root: &Path, version: &str, text: &str) -> PathBuf {
    use std::os::unix::fs::symlink;
    let v = root.join(version);
    std::fs::create_dir(&v).unwrap();
    std::fs::write(v.join("rules.yaml"), text).unwrap();
    symlink(version, root.join("..data")).unwrap();
    symlink("..data/rules.yaml", root.join("rules.yaml")).unwrap();
    root.join("rules.yaml")
}

/// The kubelet's update: the new version beside the old, `..data` swapped in one rename, the
/// old version removed.
fn configmap_swap(root: &Path, old: &str, new: &str, text: &str) {
    use std::os::unix::fs::symlink;
    let v = root.join(new);
    std::fs::create_dir(&v).unwrap();
    std::fs::write(v.join("rules.yaml"), text).unwrap();
    symlink(new, root.join("..data_tmp")).unwrap();
    std::fs::rename(root.join("..data_tmp"), root.join("..data")).unwrap();
    std::fs::remove_dir_all(root.join(old)).unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_configmap_swap_reaches_every_replica() {
    let mono = echo::start("monolith").await;
    let svc = echo::start("svc").await;
    let root = tempfile::tempdir().unwrap();
    let (v1, v2) = (flip(mono, svc, false), flip(mono, svc, true));
    let path = configmap(root.path(), "..2026_12_01_01", &v1);
    let mut replicas = Vec::new();
    for _ in 0..3 {
        replicas.push(Proxy::start_file(tempfile::tempdir().unwrap(), path.clone(), &[]).await);
    }
    let all: Vec<&Proxy> = replicas.iter().collect();
    let client = reqwest::Client::new();
    for r in &all {
        assert_eq!(served_by(&client, r).await, "monolith");
    }
    let (h1, h2) = (file_hash(&v1), file_hash(&v2));
    assert_ne!(h1, h2);
    until_all_report(&all, &h1).await;

    configmap_swap(root.path(), "..2026_12_01_01", "..2026_12_01_02", &v2);
    for (i, r) in all.iter().enumerate() {
        let deadline = Instant::now() + Duration::from_secs(20);
        while served_by(&client, r).await != "svc" {
            assert!(
                Instant::now() < deadline,
                "replica {i} never served the swapped-in rules; its log:\n{}",
                r.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    until_all_report(&all, &h2).await;
    // And each says so in its own config API.
    for r in &all {
        let config = r.config().await;
        assert_eq!(config["rules"]["routes"][0]["mode"], "migrated", "{config}");
    }
}

/// The series an instant query returns.
async fn query(api: &str, expr: &str) -> Vec<Value> {
    let url = reqwest::Url::parse_with_params(&format!("{api}/api/v1/query"), &[("query", expr)]).unwrap();
    let v: Value = reqwest::get(url).await.unwrap().json().await.unwrap();
    assert_eq!(v["status"], "success", "{expr}: {v}");
    v["data"]["result"].as_array().unwrap().clone()
}

/// The value of a query that returns one series, `None` if it returns none.
async fn scalar(api: &str, expr: &str) -> Option<f64> {
    let result = query(api, expr).await;
    assert!(result.len() <= 1, "{expr}: {result:?}");
    result.first().map(|r| r["value"][1].as_str().unwrap().parse().unwrap())
}

/// Polls `expr` until `done` holds for what it returns; panics with the last answer after 30 s.
async fn until_query(api: &str, expr: &str, what: &str, done: impl Fn(&[Value]) -> bool) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let result = query(api, expr).await;
        if done(&result) {
            return result;
        }
        assert!(Instant::now() < deadline, "{what}: {expr} still returns {result:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The sum of a replica's own `strangler_requests_total`, all sides or one.
fn own_requests(metrics: &str, side: Option<&str>) -> f64 {
    metrics
        .lines()
        .filter(|l| l.starts_with("strangler_requests_total{"))
        .filter(|l| side.is_none_or(|s| l.contains(&format!("side=\"{s}\""))))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// The fleet's own figures once they count all `sent` requests (a request is counted just after
/// its answer went out): requests on the new side, and in all.
async fn fleet_counts(replicas: &[&Proxy], sent: f64) -> (f64, f64) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (mut new, mut total) = (0.0, 0.0);
        for r in replicas {
            let m = r.metrics().await;
            new += own_requests(&m, Some("new"));
            total += own_requests(&m, None);
        }
        if total == sent {
            return (new, total);
        }
        assert!(
            Instant::now() < deadline,
            "the replicas counted {total} of {sent} requests"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn mixed_rules(mono: SocketAddr, svc: SocketAddr, catalog: &str) -> String {
    rules(
        &[("monolith", mono), ("svc", svc)],
        &format!(
            "  - {{ name: stock, match: {{ prefix: /api/inventory }}, mode: canary, service: svc, canary: {{ percent: 30, sticky: \"header:x-user-id\" }} }}\n\
             \x20 - {{ name: catalog, match: {{ prefix: /api/catalog }}, {catalog} }}\n"
        ),
    )
}

/// Sends user `u`'s requests for each `u` in `users` to `proxy`: a stock item, and a catalog page
/// for every fifth user. Returns how many requests that was.
async fn traffic(proxy: &Proxy, users: std::ops::Range<usize>) -> f64 {
    let sent = users.clone().map(|u| if u % 5 == 0 { 2.0 } else { 1.0 }).sum();
    let client = reqwest::Client::new();
    stream::iter(users)
        .map(|u| {
            let client = client.clone();
            async move {
                let mut paths = vec![format!("/api/inventory/SKU-{:04}", u % 200)];
                if u % 5 == 0 {
                    paths.push("/api/catalog/products/3".to_string());
                }
                for p in paths {
                    let r = client
                        .get(proxy.url(&p))
                        .header("x-user-id", format!("fleet-user-{u}"))
                        .send()
                        .await
                        .expect("request");
                    assert_eq!(r.status(), 200, "{p}");
                }
            }
        })
        .buffered(8)
        .collect::<Vec<()>>()
        .await;
    sent
}

#[tokio::test(flavor = "multi_thread")]
async fn prometheus_sums_the_fleet_and_sees_a_replica_on_other_rules() {
    let Some(prometheus) = common::tools::require("prometheus") else {
        return;
    };
    let mono = echo::start("monolith").await;
    let svc = echo::start("svc").await;
    let v1 = mixed_rules(mono, svc, "mode: legacy");
    let v2 = mixed_rules(mono, svc, "mode: migrated, service: svc");
    // Two replicas share a file; the third reads its own copy, byte for byte the same for now,
    // as a replica whose volume stopped following the ConfigMap would.
    let shared = tempfile::tempdir().unwrap();
    let own = tempfile::tempdir().unwrap();
    let (shared_path, own_path) = (shared.path().join("rules.yaml"), own.path().join("rules.yaml"));
    std::fs::write(&shared_path, &v1).unwrap();
    std::fs::write(&own_path, &v1).unwrap();
    let a = Proxy::start_file(tempfile::tempdir().unwrap(), shared_path.clone(), &[]).await;
    let b = Proxy::start_file(tempfile::tempdir().unwrap(), shared_path.clone(), &[]).await;
    let c = Proxy::start_file(tempfile::tempdir().unwrap(), own_path.clone(), &[]).await;
    let all = [&a, &b, &c];

    let prom_dir = tempfile::tempdir().unwrap();
    let alerts = repo("dashboards/alerts.yaml");
    let prom = common::prometheus::start(
        &prometheus,
        prom_dir.path(),
        &[a.admin, b.admin, c.admin],
        Some(&alerts),
    )
    .await;
    let api = prom.api.clone();
    let api = api.as_str();

    let alerts: Value =
        serde_saphyr::from_str(&std::fs::read_to_string(repo("dashboards/alerts.yaml")).unwrap()).unwrap();
    let alert = alerts["groups"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|g| g["rules"].as_array().unwrap())
        .find(|r| r["alert"] == "StranglerReplicasServeDifferentRules")
        .expect("dashboards/alerts.yaml has StranglerReplicasServeDifferentRules")["expr"]
        .as_str()
        .unwrap()
        .trim()
        .to_string();
    let dash: Value =
        serde_json::from_str(&std::fs::read_to_string(repo("dashboards/strangler.json")).unwrap()).unwrap();
    let share_expr = dash["panels"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["title"] == "Traffic on new services (all routes)")
        .expect("the dashboard has a fleet-wide traffic share panel")["targets"][0]["expr"]
        .as_str()
        .unwrap()
        .to_string();

    // All three scraped, on the same rules: the alert's expression is empty (not merely
    // unevaluated: the three identities are there).
    until_query(api, "count(strangler_config_info)", "three replicas scraped", |r| {
        r.first().is_some_and(|s| s["value"][1] == "3")
    })
    .await;
    let versions = query(api, "count(count by (hash) (strangler_config_info))").await;
    assert_eq!(
        versions[0]["value"][1], "1",
        "the replicas on one file report several config hashes: {versions:?}"
    );
    assert_eq!(
        query(api, &alert).await,
        Vec::<Value>::new(),
        "{alert} fires on one version"
    );

    // A first request on each side of each route of each replica, so every counter exists when
    // the main traffic starts and rate() sees all of it.
    let user_on = |new: bool| {
        (0..)
            .find(|u| (canary_bucket(format!("fleet-user-{u}").as_bytes()) < 3_000) == new)
            .unwrap()
    };
    let (first_new, first_old) = (user_on(true), user_on(false));
    let mut sent = 0.0;
    for r in all {
        for u in [first_new, first_old] {
            sent += traffic(r, u..u + 1).await;
        }
    }
    let scraped_all = |total: f64| {
        move |r: &[Value]| {
            r.first()
                .and_then(|s| s["value"][1].as_str()?.parse::<f64>().ok())
                .is_some_and(|v| v == total)
        }
    };
    let (_, before) = fleet_counts(&all, sent).await;
    until_query(
        api,
        "sum(strangler_requests_total)",
        "the first requests scraped",
        scraped_all(before),
    )
    .await;

    // Unequal traffic on the three, so only the sum gives the fleet's figure.
    sent += traffic(&a, 1_000..1_900).await;
    sent += traffic(&b, 2_000..2_500).await;
    sent += traffic(&c, 3_000..3_200).await;
    let (new, total) = fleet_counts(&all, sent).await;
    until_query(
        api,
        "sum(strangler_requests_total)",
        "the traffic scraped",
        scraped_all(total),
    )
    .await;
    let own_share = new / total;
    assert!(
        (0.15..0.35).contains(&own_share),
        "the replicas counted {new} of {total} requests on the new side"
    );
    // The counters as scraped are exactly the replicas' own.
    let scraped = scalar(
        api,
        "sum(strangler_requests_total{side=\"new\"}) / sum(strangler_requests_total)",
    )
    .await
    .expect("a fleet share");
    assert!(
        (scraped - own_share).abs() < 1e-9,
        "Prometheus has the fleet's share at {scraped}, the replicas counted {own_share} ({new} of {total})"
    );
    // The dashboard's rate of it agrees (its extrapolation moves it a little).
    let rated = scalar(api, &share_expr).await.expect("the dashboard's fleet share");
    assert!(
        (rated - own_share).abs() < 0.05,
        "{share_expr} is {rated}, the replicas counted {own_share} ({new} of {total})"
    );

    eprintln!(
        "fleet share: the replicas counted {own_share:.4} ({new} of {total}), the dashboard's rate says {rated:.4}"
    );

    // The ConfigMap moves on, the third replica's copy doesn't: two versions in the fleet.
    replace_file(&shared_path, &v2);
    until_all_report(&[&a, &b], &file_hash(&v2)).await;
    assert_eq!(reported_hashes(&c).await, [file_hash(&v1)]);
    let firing = until_query(api, &alert, "the alert on two versions", |r| !r.is_empty()).await;
    assert_eq!(firing.len(), 1, "{firing:?}");
    assert_eq!(firing[0]["value"][1], "2", "{firing:?}");

    // The third catches up: one version again, and the expression is empty again.
    replace_file(&own_path, &v2);
    until_all_report(&all, &file_hash(&v2)).await;
    until_query(api, &alert, "the alert once all agree again", |r| r.is_empty()).await;
}
