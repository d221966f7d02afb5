//! The in-process autopilot end to end: a route with a `rollout` moves through its steps on live
//! traffic through the real proxy to the bundled shop, by editing rules.yaml; it rolls back on a
//! failing service, adopts hand edits, never writes over a broken file, survives a restart, and
//! obeys the admin API.

mod common;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::proxy::{metric, Proxy};
use common::shop::{start_shop, Shop};
use serde_json::Value;
use shop_kit::faults::FaultSettings;

/// The route every test moves: stock reads, from the monolith to the inventory service, whose
/// answers match the monolith's once `served_at` is ignored.
const ROUTE: &str = "stock";

/// A rules file in block style, with comments and blank lines the autopilot must keep.
/// `route_extra` goes under the route (e.g. a `canary:` entry); `steps` and `hold` are the rollout's.
fn rules(shop: &Shop, mode: &str, route_extra: &str, steps: &str, hold: &str) -> String {
    format!(
        "# rules for the autopilot test: every comment and blank line here must survive\n\
         legacy: monolith\n\
         response_headers: true\n\
         autopilot: {{ enabled: true, interval: 100ms }}   # decide often\n\
         \n\
         upstreams:\n\
         \x20 monolith: {{ url: \"http://{mono}\" }}\n\
         \x20 inventory: {{ url: \"http://{inv}\", timeouts: {{ connect: 200ms, response: 2s }} }}\n\
         \n\
         routes:\n\
         \x20 # stock reads move to the inventory service\n\
         \x20 - name: {ROUTE}\n\
         \x20   match: {{ prefix: /api/inventory, methods: [GET] }}\n\
         \x20   mode: {mode}   # the autopilot edits this value\n\
         {route_extra}\
         \x20   service: inventory\n\
         \x20   shadow: {{ ignore: [\"$.served_at\"] }}\n\
         \n\
         \x20   # the way there, and what each step must show\n\
         \x20   rollout:\n\
         \x20     steps: {steps}\n\
         \x20     hold: {hold}\n\
         \x20     gates: {{ min_requests: 30, match_rate: 99%, error_rate: +1%, p99: 100x, fallback_rate: 1% }}\n\
         \n\
         \x20 # a route without a rollout, which nothing touches\n\
         \x20 - name: products\n\
         \x20   match: {{ prefix: /api/products }}\n\
         \x20   mode: legacy\n",
        mono = shop.monolith,
        inv = shop.inventory,
    )
}

/// A directory holding `rules.yaml` with `text`; the journal goes to `.strangler/` beside it.
fn rules_dir(text: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("rules.yaml");
    std::fs::write(&path, text).unwrap();
    (dir, path)
}

async fn start(rules: &Path) -> Proxy {
    Proxy::start_file(tempfile::tempdir().unwrap(), rules.to_path_buf(), &[]).await
}

/// Steady GETs of stock reads from a few workers, counting every answer that is not a 2xx.
/// Bounded: each worker stops when told or after a minute.
struct Load {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicU64>,
    bad: Arc<Mutex<Vec<String>>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    fn start(proxy: &Proxy) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let ok = Arc::new(AtomicU64::new(0));
        let bad = Arc::new(Mutex::new(Vec::new()));
        let tasks = (0..3u64)
            .map(|w| {
                let (stop, ok, bad) = (stop.clone(), ok.clone(), bad.clone());
                let base = proxy.url("/api/inventory/");
                tokio::spawn(async move {
                    let client = reqwest::Client::new();
                    let deadline = Instant::now() + Duration::from_secs(60);
                    let mut i = w;
                    while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                        i += 3;
                        let url = format!("{base}SKU-{:04}", i % 240 + 1);
                        match client.get(&url).header("x-user-id", format!("user-{i}")).send().await {
                            Ok(r) if r.status().is_success() => {
                                ok.fetch_add(1, Ordering::Relaxed);
                            }
                            Ok(r) => {
                                let status = r.status();
                                let body = r.text().await.unwrap_or_default();
                                bad.lock().unwrap().push(format!("{url}: {status} {body}"));
                            }
                            Err(e) => bad.lock().unwrap().push(format!("{url}: {e}")),
                        }
                        tokio::time::sleep(Duration::from_millis(1)).await;
                    }
                })
            })
            .collect();
        Load { stop, ok, bad, tasks }
    }

    /// Stop, and return (2xx answers, the others).
    async fn stop(self) -> (u64, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.tasks {
            t.await.expect("load worker");
        }
        let bad = self.bad.lock().unwrap().clone();
        (self.ok.load(Ordering::Relaxed), bad)
    }
}

/// The journal's lines, parsed.
fn journal(rules: &Path) -> Vec<Value> {
    let path = rules.parent().unwrap().join(".strangler/autopilot.jsonl");
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("journal line {l:?}: {e}")))
        .collect()
}

/// `(direction, from, to)` of each journal line.
fn moves(journal: &[Value]) -> Vec<(String, String, String)> {
    journal
        .iter()
        .map(|t| {
            let s = |k: &str| t[k].as_str().unwrap_or_default().to_string();
            (s("direction"), s("from"), s("to"))
        })
        .collect()
}

fn mv(direction: &str, from: &str, to: &str) -> (String, String, String) {
    (direction.into(), from.into(), to.into())
}

/// The route's entry in `GET /api/autopilot`.
async fn view(proxy: &Proxy) -> Value {
    let v = proxy.admin_json("/api/autopilot").await;
    v["routes"]
        .as_array()
        .and_then(|rs| rs.iter().find(|r| r["route"] == ROUTE).cloned())
        .unwrap_or_else(|| panic!("no {ROUTE} in /api/autopilot: {v}"))
}

/// Poll `check` every 20 ms until it gives a value; fail with `what` (and the proxy's log) after `limit`.
async fn until<T, F, Fut>(proxy: &Proxy, what: &str, limit: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}; /api/autopilot: {}\nfile:\n{}\nlog:\n{}",
            proxy.admin_json("/api/autopilot").await,
            std::fs::read_to_string(&proxy.rules).unwrap_or_default(),
            proxy.log()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Wait until the route reports step `step` in `GET /api/autopilot`.
async fn reaches(proxy: &Proxy, step: &str, limit: Duration) -> Value {
    until(proxy, &format!("step {step}"), limit, || async {
        let v = view(proxy).await;
        (v["step"] == step).then_some(v)
    })
    .await
}

/// Save the file the way an editor that writes a new file and renames it does.
fn save_by_hand(path: &Path, text: &str) {
    let tmp = path.with_extension("by-hand");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// The lines only in `a` and the lines only in `b`, each in order (a longest-common-subsequence diff).
fn line_diff(a: &str, b: &str) -> (Vec<String>, Vec<String>) {
    let (a, b): (Vec<&str>, Vec<&str>) = (a.lines().collect(), b.lines().collect());
    let mut lcs = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for i in (0..a.len()).rev() {
        for j in (0..b.len()).rev() {
            lcs[i][j] = if a[i] == b[j] {
                lcs[i + 1][j + 1] + 1
            } else {
                lcs[i + 1][j].max(lcs[i][j + 1])
            };
        }
    }
    let (mut i, mut j) = (0, 0);
    let (mut removed, mut added) = (Vec::new(), Vec::new());
    while i < a.len() || j < b.len() {
        if i < a.len() && j < b.len() && a[i] == b[j] {
            i += 1;
            j += 1;
        } else if j < b.len() && (i == a.len() || lcs[i][j + 1] >= lcs[i + 1][j]) {
            added.push(b[j].to_string());
            j += 1;
        } else {
            removed.push(a[i].to_string());
            i += 1;
        }
    }
    (removed, added)
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_healthy_service_is_promoted_through_every_step_by_editing_two_values() {
    let shop = start_shop().await;
    let original = rules(&shop, "shadow", "", "[shadow, 10, 50, migrated]", "300ms");
    let (_dir, path) = rules_dir(&original);
    let proxy = start(&path).await;
    let load = Load::start(&proxy);
    reaches(&proxy, "migrated", Duration::from_secs(30)).await;
    let (ok, bad) = load.stop().await;
    assert!(bad.is_empty(), "clients saw errors: {bad:?}");
    assert!(ok > 0);

    let now = read(&path);
    let (removed, added) = line_diff(&original, &now);
    assert_eq!(
        (removed, added),
        (
            vec!["    mode: shadow   # the autopilot edits this value".to_string()],
            vec![
                "    canary: { percent: 50 }".to_string(),
                "    mode: migrated   # the autopilot edits this value".to_string(),
            ]
        ),
        "the only changes are the mode value and the added canary entry; the file now:\n{now}"
    );
    let journal = journal(&path);
    assert_eq!(
        moves(&journal),
        [
            mv("promote", "shadow", "10"),
            mv("promote", "10", "50"),
            mv("promote", "50", "migrated"),
        ],
        "{journal:#?}"
    );
    for t in &journal {
        assert_eq!(
            (t["route"].as_str(), t["reason"].as_str()),
            (Some(ROUTE), Some("gates_held")),
            "{t}"
        );
    }
    // The gauges follow at the next decision.
    let m = proxy.metrics_with(&["strangler_rollout_step{route=\"stock\"} 3"]).await;
    assert_eq!(metric(&m, "strangler_rollout_step{route=\"stock\"}"), 3, "{m}");
    assert_eq!(
        metric(
            &m,
            "strangler_rollout_transitions_total{direction=\"promote\",reason=\"gates_held\",route=\"stock\"}"
        ),
        3,
        "{m}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_service_failing_at_25_percent_is_rolled_back_and_paused_without_a_client_error() {
    let shop = start_shop().await;
    // A longer hold, so the fault is on before the step at 25 could be promoted.
    let (_dir, path) = rules_dir(&rules(&shop, "shadow", "", "[shadow, 5, 25, migrated]", "1s"));
    let proxy = start(&path).await;
    let load = Load::start(&proxy);
    reaches(&proxy, "25", Duration::from_secs(30)).await;
    shop.inventory_faults.set(FaultSettings {
        error_rate: 1.0,
        ..Default::default()
    });
    let back = until(&proxy, "a rollback", Duration::from_secs(20), || async {
        let v = view(&proxy).await;
        (v["step"] == "shadow").then_some(v)
    })
    .await;
    assert_eq!(back["paused"], true, "{back}");
    // A few more decisions: it stays where it is, paused, and clients still see no error.
    tokio::time::sleep(Duration::from_millis(600)).await;
    let (ok, bad) = load.stop().await;
    assert!(
        bad.is_empty(),
        "clients saw {} errors: {:?}",
        bad.len(),
        &bad[..bad.len().min(5)]
    );
    assert!(ok > 0);

    let text = read(&path);
    assert!(
        text.contains("    mode: shadow   # the autopilot edits this value\n"),
        "{text}"
    );
    assert!(text.contains("    rollout:\n      paused: true\n"), "{text}");
    let journal = journal(&path);
    assert_eq!(
        moves(&journal),
        [
            mv("promote", "shadow", "5"),
            mv("promote", "5", "25"),
            mv("rollback", "25", "shadow"),
        ],
        "the first decision at 25 with the fault on rolled back: {journal:#?}"
    );
    let m = proxy.metrics().await;
    let rollbacks: u64 = m
        .lines()
        .filter(|l| l.starts_with("strangler_rollout_transitions_total{") && l.contains("direction=\"rollback\""))
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
        .map(|v| v as u64)
        .sum();
    assert_eq!(rollbacks, 1, "{m}");
    assert_eq!(metric(&m, "strangler_rollout_paused{route=\"stock\"}"), 1, "{m}");
    assert_eq!(metric(&m, "strangler_rollout_step{route=\"stock\"}"), 0, "{m}");
    // The service failed: its answers fell back. The reason names that, not the shadow copies of
    // the monolith's share, which mismatch only because the service answered 503 to them too.
    let last = journal.last().unwrap();
    assert!(
        ["error_rate", "fallback_rate"].contains(&last["reason"].as_str().unwrap_or_default()),
        "{last}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_hand_edit_is_adopted_and_a_broken_one_is_never_written_over() {
    let shop = start_shop().await;
    let at_25 = rules(
        &shop,
        "canary",
        "    canary: { percent: 25 }\n",
        "[shadow, 5, 25, migrated]",
        "300ms",
    );
    let (_dir, path) = rules_dir(&at_25);
    let proxy = start(&path).await;
    // No traffic yet: the route stays at 25 until a person moves it.
    until(&proxy, "the first decision", Duration::from_secs(10), || async {
        let v = view(&proxy).await;
        (v["step"] == "25" && v["status"].as_str().is_some_and(|s| !s.is_empty())).then_some(())
    })
    .await;

    // A person moves it back to 5.
    let at_5 = at_25.replace("canary: { percent: 25 }", "canary: { percent: 5 }");
    save_by_hand(&path, &at_5);
    reaches(&proxy, "5", Duration::from_secs(10)).await;
    let adopted = until(&proxy, "the adopt line", Duration::from_secs(10), || async {
        journal(&path).into_iter().find(|t| t["direction"] == "adopt")
    })
    .await;
    assert_eq!(
        (&adopted["from"], &adopted["to"], &adopted["reason"]),
        (&Value::from("25"), &Value::from("5"), &Value::from("hand_edit")),
        "{adopted}"
    );

    // A broken hand edit: the route names an upstream that does not exist. The reload refuses it,
    // the rules at 5 keep serving, and the autopilot, which would promote now, writes nothing.
    let broken = at_5.replace("    service: inventory\n", "    service: inventry\n");
    assert_ne!(broken, at_5);
    save_by_hand(&path, &broken);
    let load = Load::start(&proxy);
    until(
        &proxy,
        "a promotion that could not be written",
        Duration::from_secs(15),
        || async {
            let v = view(&proxy).await;
            v["status"]
                .as_str()
                .is_some_and(|s| s.contains("not done"))
                .then_some(())
        },
    )
    .await;
    let m = proxy.metrics_with(&["strangler_config_last_reload_successful 0"]).await;
    assert_eq!(
        metric(&m, "strangler_config_last_reload_successful"),
        0,
        "the reload refused it"
    );
    // A few more decisions.
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(
        read(&path),
        broken,
        "the autopilot wrote over a file that does not load"
    );
    assert_eq!(view(&proxy).await["step"], "5");
    assert_eq!(
        moves(&journal(&path)),
        [mv("adopt", "25", "5")],
        "nothing moved while the file was broken"
    );

    // The person fixes the file: the autopilot carries on from 5.
    save_by_hand(&path, &at_5);
    reaches(&proxy, "migrated", Duration::from_secs(30)).await;
    let (_, bad) = load.stop().await;
    assert!(bad.is_empty(), "clients saw errors: {bad:?}");
    assert_eq!(
        moves(&journal(&path)),
        [
            mv("adopt", "25", "5"),
            mv("promote", "5", "25"),
            mv("promote", "25", "migrated"),
        ]
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_restart_mid_rollout_continues_from_the_file() {
    let shop = start_shop().await;
    let (_dir, path) = rules_dir(&rules(&shop, "shadow", "", "[shadow, 10, 50, migrated]", "500ms"));
    let mut first = start(&path).await;
    let load = Load::start(&first);
    until(&first, "a canary step", Duration::from_secs(30), || async {
        read(&path).contains("    mode: canary ").then_some(())
    })
    .await;
    load.stop().await;
    first.signal("TERM");
    first
        .wait_exit(Duration::from_secs(20))
        .await
        .expect("the proxy stops on SIGTERM");
    drop(first);
    let text = read(&path);
    assert!(text.contains("    mode: canary "), "stopped at a canary step: {text}");
    let at = ["10", "50"]
        .into_iter()
        .find(|p| text.contains(&format!("    canary: {{ percent: {p} }}\n")))
        .unwrap_or_else(|| panic!("no canary step in {text}"));
    let before = journal(&path).len();

    let second = start(&path).await;
    assert_eq!(
        view(&second).await["step"],
        at,
        "the new process starts where the file is"
    );
    let load = Load::start(&second);
    reaches(&second, "migrated", Duration::from_secs(30)).await;
    let (_, bad) = load.stop().await;
    assert!(bad.is_empty(), "clients saw errors: {bad:?}");
    let all = moves(&journal(&path));
    let after = &all[before..];
    let want: &[(String, String, String)] = if at == "10" {
        &[mv("promote", "10", "50"), mv("promote", "50", "migrated")]
    } else {
        &[mv("promote", "50", "migrated")]
    };
    assert_eq!(after, want, "the whole journal: {all:?}");
    assert_eq!(all[0], mv("promote", "shadow", "10"));
}

#[tokio::test(flavor = "multi_thread")]
async fn pause_holds_the_route_and_resume_lets_it_move_on() {
    let shop = start_shop().await;
    let (_dir, path) = rules_dir(&rules(&shop, "shadow", "", "[shadow, 10, migrated]", "300ms"));
    let proxy = start(&path).await;
    let client = reqwest::Client::new();
    let act = |action: &str| {
        let req = client.post(proxy.admin_url(&format!("/api/autopilot/{ROUTE}/{action}")));
        async move {
            let r = req.send().await.unwrap();
            (r.status().as_u16(), r.json::<Value>().await.unwrap_or(Value::Null))
        }
    };
    until(&proxy, "the first decision", Duration::from_secs(10), || async {
        let v = view(&proxy).await;
        v["status"].as_str().is_some_and(|s| !s.is_empty()).then_some(())
    })
    .await;
    // No token configured, admin on loopback: POSTs are allowed.
    let (status, body) = act("pause").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["paused"], true, "{body}");
    let paused = read(&path);
    assert!(paused.contains("    rollout:\n      paused: true\n"), "{paused}");
    let v = view(&proxy).await;
    assert_eq!(v["paused"], true, "{v}");
    assert_eq!(v["last_transition"]["direction"], "pause", "{v}");
    assert!(v["paused_reason"].is_string(), "{v}");

    // With traffic and every gate held, it would move; paused, it does not.
    let load = Load::start(&proxy);
    let held = until(
        &proxy,
        "every gate held with the evidence",
        Duration::from_secs(20),
        || async {
            let v = view(&proxy).await;
            let gates = v["gates"].as_array().cloned().unwrap_or_default();
            let ready = !gates.is_empty()
                && gates
                    .iter()
                    .all(|g| g["ok"] == true && g["evidence"].as_u64().unwrap_or(0) >= 30);
            ready.then_some(v)
        },
    )
    .await;
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(held["step"], "shadow", "{held}");
    assert!(
        held["status"].as_str().unwrap_or_default().starts_with("paused"),
        "{held}"
    );
    assert_eq!(read(&path), paused, "a paused route was moved");
    assert_eq!(view(&proxy).await["step"], "shadow");

    let (status, body) = act("resume").await;
    assert_eq!(status, 200, "{body}");
    assert!(read(&path).contains("    rollout:\n      paused: false\n"));
    reaches(&proxy, "migrated", Duration::from_secs(30)).await;
    let (_, bad) = load.stop().await;
    assert!(bad.is_empty(), "clients saw errors: {bad:?}");
    let journal = journal(&path);
    assert_eq!(
        moves(&journal),
        [
            mv("pause", "shadow", "shadow"),
            mv("resume", "shadow", "shadow"),
            mv("promote", "shadow", "10"),
            mv("promote", "10", "migrated"),
        ],
        "{journal:#?}"
    );
    assert_eq!(journal[0]["reason"], "manual");
    assert_eq!(journal[1]["reason"], "manual");
}

#[tokio::test(flavor = "multi_thread")]
async fn autopilot_actions_need_the_admin_token_when_one_is_set() {
    let shop = start_shop().await;
    let text = rules(&shop, "shadow", "", "[shadow, 10, migrated]", "300ms");
    let (_dir, path) = rules_dir(&text);
    let proxy = Proxy::start_with(
        tempfile::tempdir().unwrap(),
        path.clone(),
        &[],
        &[("RUST_LOG", "warn"), ("STRANGLER_ADMIN_TOKEN", "s3cret")],
    )
    .await;
    let client = reqwest::Client::new();
    let post = |path: &str, auth: Option<&'static str>| {
        let mut req = client.post(proxy.admin_url(path));
        if let Some(a) = auth {
            req = req.header("authorization", a);
        }
        async move { req.send().await.unwrap().status().as_u16() }
    };
    assert_eq!(post("/api/autopilot/stock/pause", None).await, 401);
    assert_eq!(post("/api/autopilot/stock/pause", Some("Bearer wrong")).await, 401);
    assert_eq!(read(&path), text, "a refused action changed the file");
    assert_eq!(post("/api/autopilot/nope/pause", Some("Bearer s3cret")).await, 404);
    assert_eq!(post("/api/autopilot/stock/jump", Some("Bearer s3cret")).await, 404);
    assert_eq!(
        post("/api/autopilot/stock/rollback", Some("Bearer s3cret")).await,
        422,
        "already at the first step"
    );
    assert_eq!(read(&path), text);
    assert_eq!(post("/api/autopilot/stock/pause", Some("Bearer s3cret")).await, 200);
    assert!(read(&path).contains("    rollout:\n      paused: true\n"));
    assert_eq!(view(&proxy).await["paused"], true);
}
