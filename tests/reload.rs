//! Hot reload of rules.yaml, end to end: every way tools write the file, SIGHUP, the admin API,
//! broken edits that change nothing, edits under load, and SIGTERM during slow requests.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::proxy::{rules, Proxy};
use common::shop::start_shop;
use shop_kit::faults::FaultSettings;

/// The rules with `/api/inventory` in the given mode (legacy: monolith answers; migrated: inventory).
fn flip(mono: SocketAddr, inv: SocketAddr, migrated: bool) -> String {
    let route = if migrated {
        "  - { name: stock, match: { prefix: /api/inventory }, mode: migrated, service: inventory }\n"
    } else {
        "  - { name: stock, match: { prefix: /api/inventory }, mode: legacy }\n"
    };
    rules(&[("monolith", mono), ("inventory", inv)], route)
}

/// Which upstream serves `/api/inventory/SKU-0001` now.
async fn upstream(client: &reqwest::Client, proxy: &Proxy) -> String {
    let r = client
        .get(proxy.url("/api/inventory/SKU-0001"))
        .send()
        .await
        .expect("request");
    assert_eq!(r.status(), 200);
    r.headers()["x-strangler-upstream"].to_str().unwrap().to_string()
}

/// Poll until `want` serves; panics after a generous limit (the benchmark measures the real time).
async fn until_served_by(client: &reqwest::Client, proxy: &Proxy, want: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while upstream(client, proxy).await != want {
        assert!(
            Instant::now() < deadline,
            "{want} never took over; proxy log:\n{}",
            proxy.log()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn write_in_place(path: &Path, text: &str) {
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(path)
        .unwrap();
    f.write_all(text.as_bytes()).unwrap();
}

fn write_and_rename(path: &Path, text: &str) {
    let tmp = path.with_extension("yaml.swp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn every_way_of_writing_the_file_reloads() {
    let shop = start_shop().await;
    let (mono, inv) = (shop.monolith, shop.inventory);
    let proxy = Proxy::start(&flip(mono, inv, false)).await;
    let client = reqwest::Client::new();
    assert_eq!(upstream(&client, &proxy).await, "monolith");

    write_in_place(&proxy.rules, &flip(mono, inv, true));
    until_served_by(&client, &proxy, "inventory").await;

    write_and_rename(&proxy.rules, &flip(mono, inv, false));
    until_served_by(&client, &proxy, "monolith").await;

    let sed = std::process::Command::new("sed")
        .args(["-i", "s/mode: legacy }/mode: migrated, service: inventory }/"])
        .arg(&proxy.rules)
        .status()
        .unwrap();
    assert!(sed.success());
    until_served_by(&client, &proxy, "inventory").await;

    let config = proxy.config().await;
    assert_eq!(config["generation"], 3, "{config}");
    assert_eq!(config["last_reload"]["result"], "success");
    assert_eq!(config["last_reload"]["trigger"], "watch");
}

/// An edit no watch event reports (another node's write on a network file system) is picked up
/// by the poll: here rules.yaml is a symlink into a directory nobody watches, and its target is
/// replaced there. A broken edit there is refused once, not again at every poll.
#[tokio::test(flavor = "multi_thread")]
async fn an_edit_no_event_reports_is_found_by_the_poll_and_a_broken_one_refused_once() {
    use std::os::unix::fs::symlink;
    let shop = start_shop().await;
    let (mono, inv) = (shop.monolith, shop.inventory);
    let dir = tempfile::tempdir().unwrap();
    let elsewhere = tempfile::tempdir().unwrap();
    let target = elsewhere.path().join("rules.yaml");
    std::fs::write(&target, flip(mono, inv, false)).unwrap();
    // In a directory of its own: the proxy's log, beside it in `dir`, makes no event there.
    let conf = dir.path().join("conf");
    std::fs::create_dir(&conf).unwrap();
    let path = conf.join("rules.yaml");
    symlink(&target, &path).unwrap();
    let proxy = Proxy::start_file(dir, path, &[]).await;
    let client = reqwest::Client::new();
    assert_eq!(upstream(&client, &proxy).await, "monolith");

    // Start-up's own writes beside the rules (the state directory) are events in the watched
    // directory: let them pass, so that only the poll can find the edit.
    tokio::time::sleep(Duration::from_secs(2)).await;
    // Written whole (a rename), so that no look can catch it half written.
    write_and_rename(&target, &flip(mono, inv, true));
    // The poll looks every 5 s; allow three looks.
    let deadline = Instant::now() + Duration::from_secs(16);
    while upstream(&client, &proxy).await != "inventory" {
        assert!(
            Instant::now() < deadline,
            "the edit was never picked up; proxy log:\n{}",
            proxy.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let config = proxy.config().await;
    assert_eq!(config["last_reload"]["trigger"], "poll", "{config}");
    assert_eq!(config["generation"], 1, "{config}");

    write_and_rename(&target, "routes: [ this is not yaml\n");
    let deadline = Instant::now() + Duration::from_secs(16);
    while proxy.config().await["last_reload"]["result"] != "failure" {
        assert!(
            Instant::now() < deadline,
            "the broken edit was never tried; {}",
            proxy.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Two more looks at the same broken bytes: no second attempt, and the rules in force serve.
    let tried = proxy.config().await["last_reload"]["at_unix"].clone();
    tokio::time::sleep(Duration::from_secs(11)).await;
    let config = proxy.config().await;
    assert_eq!(config["last_reload"]["at_unix"], tried, "{config}");
    assert_eq!(upstream(&client, &proxy).await, "inventory");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_configmap_symlink_swap_reloads() {
    use std::os::unix::fs::symlink;
    let shop = start_shop().await;
    let (mono, inv) = (shop.monolith, shop.inventory);
    // The layout kubelet makes: rules.yaml -> ..data/rules.yaml, ..data -> ..<timestamp>/
    let dir = tempfile::tempdir().unwrap();
    let v1 = dir.path().join("..2026_11_26_01");
    std::fs::create_dir(&v1).unwrap();
    std::fs::write(v1.join("rules.yaml"), flip(mono, inv, false)).unwrap();
    symlink("..2026_11_26_01", dir.path().join("..data")).unwrap();
    symlink("..data/rules.yaml", dir.path().join("rules.yaml")).unwrap();
    let path = dir.path().join("rules.yaml");
    let proxy = Proxy::start_file(dir, path.clone(), &[]).await;
    let client = reqwest::Client::new();
    assert_eq!(upstream(&client, &proxy).await, "monolith");

    let root = path.parent().unwrap();
    let v2 = root.join("..2026_11_26_02");
    std::fs::create_dir(&v2).unwrap();
    std::fs::write(v2.join("rules.yaml"), flip(mono, inv, true)).unwrap();
    symlink("..2026_11_26_02", root.join("..data_tmp")).unwrap();
    std::fs::rename(root.join("..data_tmp"), root.join("..data")).unwrap();
    std::fs::remove_dir_all(&v1).unwrap();
    until_served_by(&client, &proxy, "inventory").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_broken_edit_changes_nothing_and_says_where() {
    let shop = start_shop().await;
    let (mono, inv) = (shop.monolith, shop.inventory);
    let proxy = Proxy::start(&flip(mono, inv, true)).await;
    let client = reqwest::Client::new();

    // Switch the file watcher's view off the table: use the API trigger to see the 422.
    let broken = flip(mono, inv, false).replace("mode: legacy }", "mode: legacy, service: nope }");
    std::fs::write(&proxy.rules, &broken).unwrap();
    let r = client.post(proxy.admin_url("/api/reload")).send().await.unwrap();
    assert_eq!(r.status(), 422);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["result"], "refused");
    let err = &body["errors"][0];
    assert_eq!(err["route"], "stock", "{body}");
    assert_eq!(err["line"], 7, "{body}");
    assert!(
        err["message"].as_str().unwrap().contains("unknown upstream \"nope\""),
        "{body}"
    );
    assert!(err["text"].as_str().unwrap().contains("rules.yaml:7:"), "{body}");

    // The rules in force keep serving.
    for _ in 0..20 {
        assert_eq!(upstream(&client, &proxy).await, "inventory");
    }
    let config = proxy.config().await;
    assert_eq!(config["generation"], 0, "{config}");
    assert_eq!(config["last_reload"]["result"], "failure");
    assert_eq!(config["last_reload"]["errors"][0]["route"], "stock");
    assert_eq!(config["rules"]["routes"][0]["mode"], "migrated");

    let m = proxy.metrics().await;
    assert!(m.contains("strangler_config_last_reload_successful 0"), "{m}");
    assert!(m.contains("strangler_config_generation 0"), "{m}");
    assert!(
        m.contains(r#"strangler_config_reloads_total{result="failure"} "#),
        "{m}"
    );
    let log = proxy
        .log_with(&["reload refused, the rules in force keep serving"])
        .await;
    assert!(log.contains("reload refused, the rules in force keep serving"), "{log}");
    assert!(!log.contains('\u{1b}'), "colour codes in a log file:\n{log}");

    // A good file then applies, and the API says so.
    std::fs::write(&proxy.rules, flip(mono, inv, false)).unwrap();
    let r = client.post(proxy.admin_url("/api/reload")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["result"], "applied");
    assert_eq!(upstream(&client, &proxy).await, "monolith");
    let m = proxy.metrics().await;
    assert!(m.contains("strangler_config_last_reload_successful 1"), "{m}");
    assert!(m.contains("strangler_routes{mode=\"legacy\"} 1"), "{m}");
    assert!(m.contains("strangler_routes{mode=\"migrated\"} 0"), "{m}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_changed_listen_address_warns_and_the_rest_applies() {
    let shop = start_shop().await;
    let (mono, inv) = (shop.monolith, shop.inventory);
    let proxy = Proxy::start(&flip(mono, inv, false)).await;
    let client = reqwest::Client::new();
    std::fs::write(
        &proxy.rules,
        format!("listen: 127.0.0.1:1\nadmin: 127.0.0.1:2\n{}", flip(mono, inv, true)),
    )
    .unwrap();
    let r = client.post(proxy.admin_url("/api/reload")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        upstream(&client, &proxy).await,
        "inventory",
        "the route change applied; still serving on the old address"
    );
    let log = proxy
        .log_with(&[
            "`listen: 127.0.0.1:1` takes effect only after a restart",
            "`admin: 127.0.0.1:2` takes effect only after a restart",
        ])
        .await;
    assert!(
        log.contains("`listen: 127.0.0.1:1` takes effect only after a restart"),
        "{log}"
    );
    assert!(
        log.contains("`admin: 127.0.0.1:2` takes effect only after a restart"),
        "{log}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_kept_upstream_keeps_its_keep_alive_connections() {
    let svc = common::echo::start("svc").await;
    let text = |route: &str| {
        rules(
            &[("svc", svc)],
            &format!("  - {{ name: {route}, match: {{ prefix: /a }}, mode: legacy }}\n"),
        )
    };
    let proxy = Proxy::start(&text("first")).await;
    let client = reqwest::Client::new();
    let port = || async {
        let v: serde_json::Value = client.get(proxy.url("/a")).send().await.unwrap().json().await.unwrap();
        v["peer_port"].as_u64().expect("echo reports the proxy's port")
    };
    // Under load a request can start before the previous one's connection is back in the pool and
    // open another, so compare sets of ports: a pool dropped by the reload would show only new
    // ports afterwards.
    let mut before = std::collections::BTreeSet::new();
    for _ in 0..6 {
        before.insert(port().await);
    }
    assert!(before.len() < 6, "the proxy pools its upstream connections: {before:?}");
    std::fs::write(&proxy.rules, text("renamed")).unwrap();
    let reload = client.post(proxy.admin_url("/api/reload")).send().await.unwrap();
    assert_eq!(reload.status(), 200);
    let mut after = std::collections::BTreeSet::new();
    for _ in 0..6 {
        after.insert(port().await);
    }
    assert!(
        !before.is_disjoint(&after),
        "after the reload pooled connections are reused: {before:?} vs {after:?}"
    );
}

/// The listeners are bound before the reload service starts listening for SIGHUP: a SIGHUP in
/// that window reloads (once the service is up) instead of ending the process, SIGHUP's default.
#[tokio::test(flavor = "multi_thread")]
async fn a_sighup_during_start_up_reloads_and_does_not_kill() {
    let shop = start_shop().await;
    let dir = tempfile::tempdir().unwrap();
    let rules_path = dir.path().join("rules.yaml");
    std::fs::write(&rules_path, flip(shop.monolith, shop.inventory, false)).unwrap();
    let admin: SocketAddr = ([127, 0, 0, 1], common::proxy::free_port()).into();
    let listen: SocketAddr = ([127, 0, 0, 1], common::proxy::free_port()).into();
    let mut child = common::proxy::strangler()
        .args(["run", "--config"])
        .arg(&rules_path)
        .args(["--listen", &listen.to_string(), "--admin", &admin.to_string()])
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(dir.path().join("proxy.log")).unwrap())
        .spawn()
        .unwrap();
    let log = || std::fs::read_to_string(dir.path().join("proxy.log")).unwrap_or_default();
    // The admin port accepts as soon as start-up binds it, before any service runs.
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(admin).is_err() {
        assert!(child.try_wait().unwrap().is_none(), "exited:\n{}", log());
        assert!(Instant::now() < deadline, "the admin port was never bound:\n{}", log());
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let hup = std::process::Command::new("kill")
        .args(["-s", "HUP", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(hup.success());
    let config = loop {
        assert!(
            child.try_wait().unwrap().is_none(),
            "SIGHUP ended the process:\n{}",
            log()
        );
        assert!(Instant::now() < deadline, "no reload:\n{}", log());
        let got = reqwest::get(format!("http://{admin}/api/config")).await;
        if let Ok(v) = got {
            let c: serde_json::Value = v.json().await.unwrap();
            if c["generation"] == 1 {
                break c;
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(config["last_reload"]["trigger"], "signal", "{config}");
    let _ = child.kill();
    let _ = child.wait();
}

#[tokio::test(flavor = "multi_thread")]
async fn sighup_reloads() {
    let shop = start_shop().await;
    let proxy = Proxy::start(&flip(shop.monolith, shop.inventory, false)).await;
    // No file event here, so only the signal can run the reload.
    proxy.signal("HUP");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let c = proxy.config().await;
        if c["generation"] == 1 {
            assert_eq!(c["last_reload"]["trigger"], "signal", "{c}");
            assert_eq!(c["last_reload"]["result"], "success", "{c}");
            break;
        }
        assert!(Instant::now() < deadline, "SIGHUP did not reload: {c}\n{}", proxy.log());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The process is still serving.
    assert_eq!(
        reqwest::get(proxy.url("/api/inventory/SKU-0001"))
            .await
            .unwrap()
            .status(),
        200
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn counters_survive_for_kept_names_and_go_for_removed_ones() {
    let shop = start_shop().await;
    let (mono, inv) = (shop.monolith, shop.inventory);
    let two = |second: &str| {
        rules(
            &[("monolith", mono), ("inventory", inv)],
            &format!(
                "  - {{ name: stock, match: {{ prefix: /api/inventory }}, mode: legacy }}\n  - {{ name: {second}, match: {{ prefix: /api/catalog }}, mode: legacy }}\n"
            ),
        )
    };
    let proxy = Proxy::start(&two("catalog")).await;
    let client = reqwest::Client::new();
    for p in [
        "/api/inventory/SKU-0001",
        "/api/inventory/SKU-0002",
        "/api/catalog/products/1",
    ] {
        assert_eq!(client.get(proxy.url(p)).send().await.unwrap().status(), 200);
    }
    std::fs::write(&proxy.rules, two("catalog-renamed")).unwrap();
    let r = client.post(proxy.admin_url("/api/reload")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let kept = r#"strangler_requests_total{route="stock",side="legacy",status="2xx",upstream="monolith"} 2"#;
    let m = proxy.metrics_with(&[kept]).await;
    assert!(m.contains(kept), "kept name keeps its counter:\n{m}");
    assert!(
        !m.contains(r#"route="catalog""#),
        "removed route's series are gone:\n{m}"
    );
    assert!(
        m.contains(r#"strangler_route_info{mode="legacy",route="catalog-renamed",service=""} 1"#),
        "{m}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn breaker_state_survives_for_a_kept_upstream_and_goes_with_a_removed_one() {
    let shop = start_shop().await;
    let (mono, inv) = (shop.monolith, shop.inventory);
    let text = |extra_route: &str| {
        format!(
            "legacy: monolith\nupstreams:\n  monolith: {{ url: \"http://{mono}\" }}\n  inventory:\n    url: \"http://{inv}\"\n    circuit_breaker: {{ min_requests: 2, failure_ratio: 0.5, open_for: 60s }}\n{}routes:\n  - {{ name: stock, match: {{ prefix: /api/inventory }}, mode: migrated, service: inventory }}\n{extra_route}",
            if extra_route.is_empty() { String::new() } else { format!("  spare: {{ url: \"http://{inv}\" }}\n") }
        )
    };
    let proxy = Proxy::start(&text(
        "  - { name: extra, match: { prefix: /x }, mode: migrated, service: spare }\n",
    ))
    .await;
    let client = reqwest::Client::new();
    shop.inventory_faults.set(FaultSettings {
        error_rate: 1.0,
        ..Default::default()
    });
    for _ in 0..2 {
        client.get(proxy.url("/api/inventory/SKU-0001")).send().await.unwrap();
    }
    let m = proxy.metrics().await;
    assert!(m.contains("strangler_circuit_state{upstream=\"inventory\"} 2"), "{m}");
    assert!(m.contains("strangler_circuit_state{upstream=\"spare\"} 0"), "{m}");

    std::fs::write(&proxy.rules, text("")).unwrap();
    let r = client.post(proxy.admin_url("/api/reload")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let m = proxy.metrics().await;
    assert!(
        m.contains("strangler_circuit_state{upstream=\"inventory\"} 2"),
        "still open after the reload:\n{m}"
    );
    assert!(
        !m.contains("upstream=\"spare\""),
        "the removed upstream's series are gone:\n{m}"
    );
    let r = client.get(proxy.url("/api/inventory/SKU-0001")).send().await.unwrap();
    assert_eq!(r.headers()["x-strangler-fallback"], "circuit_open");
}

/// One version of the rules in the 200-edits test, and what a request served by it must see.
struct Version {
    index: usize,
    /// A broken version must never serve.
    valid: bool,
    /// The upstream of `/api/inventory/...`.
    stock: &'static str,
    /// The canary percent of `/api/catalog`.
    catalog_percent: u32,
}

/// The rule set that served an answer, as the proxy reports it to `x-strangler-debug: 1`.
struct Served {
    generation: u64,
    config: String,
}

/// The hash the proxy reports in `x-strangler-config` for a rules file with these bytes.
fn config_hash(text: &str) -> String {
    format!("{:016x}", xxhash_rust::xxh3::xxh3_64(text.as_bytes()))
}

fn served(r: &reqwest::Response) -> Result<Served, String> {
    let h = |n: &str| r.headers().get(n).and_then(|v| v.to_str().ok());
    match (h("x-strangler-generation"), h("x-strangler-config")) {
        (Some(g), Some(c)) => Ok(Served {
            generation: g
                .parse()
                .map_err(|_| format!("x-strangler-generation is not a number: {g:?}"))?,
            config: c.to_string(),
        }),
        (g, c) => Err(format!(
            "a request with `x-strangler-debug: 1` must be answered with x-strangler-generation and \
             x-strangler-config, got {g:?} and {c:?} (status {})",
            r.status()
        )),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn two_hundred_edits_under_load_fail_no_request() {
    let shop = start_shop().await;
    let (mono, inv) = (shop.monolith, shop.inventory);
    // Valid versions move /api/inventory between the monolith and the service and set the
    // canary percent of /api/catalog to 0, 100 or 30; broken versions rename a route to
    // "broken" and carry a mistake, so a broken rule set that got applied would show up in
    // x-strangler-route and x-strangler-config.
    let meta = |i: usize| Version {
        index: i,
        valid: i % 2 == 0,
        stock: if i % 4 == 0 { "inventory" } else { "monolith" },
        catalog_percent: [0, 100, 30][i % 3],
    };
    let version = |i: usize| -> String {
        let v = meta(i);
        let stock = if v.stock == "inventory" {
            "  - { name: stock, match: { prefix: /api/inventory }, mode: migrated, service: inventory }\n"
        } else {
            "  - { name: stock, match: { prefix: /api/inventory }, mode: legacy }\n"
        };
        let catalog = format!(
            "  - {{ name: catalog, match: {{ prefix: /api/catalog, methods: [GET] }}, mode: canary, service: inventory, canary: {{ percent: {} }} }}\n",
            v.catalog_percent
        );
        let text = rules(&[("monolith", mono), ("inventory", inv)], &format!("{stock}{catalog}"));
        if v.valid {
            text
        } else {
            text.replace("name: stock", "name: broken")
                .replace("mode: legacy }", "mode: legacy, service: nope }")
                .replace(
                    "mode: migrated, service: inventory }",
                    "mode: migrated, service: nope }",
                )
        }
    };
    // Every file content the test will write, by the hash the proxy reports for it. Versions
    // 12 apart are the same text, so the same expectation.
    let mut versions = std::collections::HashMap::new();
    for i in 0..=200 {
        versions.entry(config_hash(&version(i))).or_insert_with(|| meta(i));
    }
    let versions = Arc::new(versions);

    let proxy = Arc::new(Proxy::start(&version(0)).await);
    {
        let r = reqwest::Client::new()
            .get(proxy.url("/"))
            .header("x-strangler-debug", "1")
            .send()
            .await
            .unwrap();
        let s = served(&r).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            (s.generation, s.config.as_str()),
            (0, config_hash(&version(0)).as_str()),
            "the first rule set is generation 0, reported by the hash of the file's bytes"
        );
    }

    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for t in 0..4 {
        let (proxy, stop, sent, versions) = (proxy.clone(), stop.clone(), sent.clone(), versions.clone());
        tasks.push(tokio::spawn(async move {
            let client = reqwest::Client::new();
            let paths = [
                "/api/inventory/SKU-0001",
                "/api/catalog/products/3",
                "/",
                "/api/users/2",
            ];
            let mut i = t;
            let mut failures = Vec::new();
            // This client sends one request at a time, so each is served by the rule set in
            // force when it arrived or a later one: its generations never go back.
            let mut last_generation = 0;
            // The rule set of each generation this client saw; one per generation.
            let mut seen: Vec<(u64, String)> = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let path = paths[i % paths.len()];
                i += 1;
                let r = match client
                    .get(proxy.url(path))
                    .header("x-strangler-debug", "1")
                    .send()
                    .await
                {
                    Ok(r) => r,
                    Err(e) => {
                        failures.push(format!("{path}: {e}"));
                        continue;
                    }
                };
                sent.fetch_add(1, Ordering::Relaxed);
                let header = |n: &str| {
                    r.headers()
                        .get(n)
                        .map_or("(absent)", |v| v.to_str().unwrap())
                        .to_string()
                };
                let (route, up) = (header("x-strangler-route"), header("x-strangler-upstream"));
                let s = match served(&r) {
                    Ok(s) => s,
                    Err(e) => {
                        failures.push(format!("{path}: {e}"));
                        continue;
                    }
                };
                let said = format!(
                    "{path}: {} route={route} upstream={up} generation={} config={}",
                    r.status(),
                    s.generation,
                    s.config
                );
                if s.generation < last_generation {
                    failures.push(format!("{said}: generation went back from {last_generation}"));
                }
                last_generation = s.generation;
                seen.push((s.generation, s.config.clone()));
                let Some(v) = versions.get(&s.config) else {
                    failures.push(format!("{said}: served by a rules file the test never wrote"));
                    continue;
                };
                if !v.valid {
                    failures.push(format!("{said}: served by broken version {}", v.index));
                    continue;
                }
                let catalog_up = match v.catalog_percent {
                    0 => up == "monolith",
                    100 => up == "inventory",
                    _ => up == "monolith" || up == "inventory",
                };
                let ok_pair = match (path, route.as_str()) {
                    ("/api/inventory/SKU-0001", "stock") => up == v.stock,
                    ("/api/catalog/products/3", "catalog") => catalog_up,
                    ("/", "(none)") | ("/api/users/2", "(none)") => up == "monolith",
                    _ => false,
                };
                // The inventory service does not serve the catalog: a canary answer there is a 404
                // from the real service, which is what the rules asked for.
                let status_ok = r.status().is_success() || (path.starts_with("/api/catalog") && up == "inventory");
                if !ok_pair || !status_ok {
                    failures.push(format!(
                        "{said}: version {} routes it to {}",
                        v.index,
                        match path {
                            "/api/inventory/SKU-0001" => format!("stock on {}", v.stock),
                            "/api/catalog/products/3" => format!("catalog, {}% on inventory", v.catalog_percent),
                            _ => "(none) on monolith".to_string(),
                        }
                    ));
                }
            }
            (failures, seen)
        }));
    }

    for i in 1..=200 {
        let text = version(i);
        if i % 3 == 0 {
            write_and_rename(&proxy.rules, &text);
        } else {
            write_in_place(&proxy.rules, &text);
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    // Let the last (valid) edit apply, then stop the load.
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::Relaxed);
    let mut failures = Vec::new();
    let mut generations = std::collections::BTreeMap::<u64, std::collections::BTreeSet<String>>::new();
    for t in tasks {
        let (f, seen) = t.await.unwrap();
        failures.extend(f);
        for (g, c) in seen {
            generations.entry(g).or_default().insert(c);
        }
    }
    assert!(
        failures.is_empty(),
        "{} failed requests, e.g. {:#?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );
    assert!(sent.load(Ordering::Relaxed) > 100, "the load ran");
    let split: Vec<_> = generations.iter().filter(|(_, c)| c.len() > 1).collect();
    assert!(split.is_empty(), "one generation served by two rule sets: {split:?}");
    eprintln!(
        "{} generations seen by the clients: {:?}",
        generations.len(),
        generations.keys().collect::<Vec<_>>()
    );

    // The last edit comes into force (a reload may still be on its way), as the generation the
    // admin API reports.
    let client = reqwest::Client::new();
    let last = config_hash(&version(200));
    let mut now = None;
    for _ in 0..500 {
        let r = client
            .get(proxy.url("/"))
            .header("x-strangler-debug", "1")
            .send()
            .await
            .unwrap();
        let s = served(&r).unwrap_or_else(|e| panic!("{e}"));
        if s.config == last {
            now = Some(s.generation);
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let now = now.unwrap_or_else(|| panic!("the last edit never came into force; log:\n{}", proxy.log()));
    let config = proxy.config().await;
    let generation = config["generation"].as_u64().unwrap();
    assert_eq!(
        now, generation,
        "the answers and /api/config name the same generation: {config}"
    );
    // Many valid edits were applied while the load ran (bursts coalesce, so not all 100).
    eprintln!(
        "applied {generation} reloads; {} requests",
        sent.load(Ordering::Relaxed)
    );
    assert!(generation >= 10, "{config}");
    let m = proxy.metrics().await;
    assert!(!m.contains(r#"route="broken""#), "a broken rule set was applied:\n{m}");
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_lets_slow_requests_finish_and_exits_0() {
    let shop = start_shop().await;
    shop.inventory_faults.set(FaultSettings {
        latency: Duration::from_millis(1500),
        ..FaultSettings::default()
    });
    let text = flip(shop.monolith, shop.inventory, true);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("rules.yaml");
    std::fs::write(&path, text).unwrap();
    let mut proxy = Proxy::start_file(dir, path, &["--grace-period", "4", "--shutdown-timeout", "2"]).await;
    let url = proxy.url("/api/inventory/SKU-0001");
    let slow: Vec<_> = (0..4)
        .map(|_| {
            let url = url.clone();
            tokio::spawn(async move { reqwest::get(url).await.map(|r| r.status().as_u16()) })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(300)).await;
    proxy.signal("TERM");
    for s in slow {
        assert_eq!(s.await.unwrap().expect("slow request completes"), 200);
    }
    let status = proxy
        .wait_exit(Duration::from_secs(20))
        .await
        .expect("exits after the grace period");
    assert!(status.success(), "exit status {status:?}; log:\n{}", proxy.log());
}
