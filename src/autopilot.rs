//! The autopilot: moves each route with a `rollout` through its steps on the evidence gathered
//! since it entered the step, and back (paused) when a gate is clearly breached.
//!
//! rules.yaml stays the only place a route's stage lives: every move is an edit of the file
//! (`edit`), written with a compare-and-swap and applied by the hot reload like a person's edit.
//! A hand edit that puts a route on another step is adopted; a broken file stops it from writing.
//! Each transition goes to the journal (`state_dir/autopilot.jsonl`), the log and the metrics.

pub mod edit;
pub mod gates;

use std::collections::{HashMap, VecDeque};
use std::io::Write;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use async_trait::async_trait;
use pingora_core::server::ShutdownWatch;
use pingora_core::services::background::BackgroundService;
use prometheus::core::Metric;
use prometheus::Histogram;
use serde::Serialize;
use serde_json::{json, Value};

use crate::fallback::Reason;
use crate::live::Live;
use crate::metrics::{Metrics, RouteMetric};
use crate::reload::{Outcome, Reloader, Trigger};
use crate::rules::{OnFailure, Rollout, Route, Step};
use crate::state::StateDir;
use gates::{Evidence, Gate, Verdict};

/// The journal's file name in `state_dir`.
pub const JOURNAL: &str = "autopilot.jsonl";

/// How many of the latest transitions `GET /api/autopilot` shows (the journal keeps them all).
const RECENT: usize = 20;

fn now_unix() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// One transition, as the journal, the log and `GET /api/autopilot` show it.
#[derive(Debug, Clone, Serialize)]
pub struct Transition {
    pub at: f64,
    pub route: String,
    pub from: String,
    pub to: String,
    /// `promote`, `rollback`, `pause`, `resume` or `adopt` (a person moved it).
    pub direction: &'static str,
    /// A short, fixed reason for the metric label: `gates_held`, a gate's name, `manual`, `hand_edit`.
    pub reason: &'static str,
    pub detail: String,
    pub gates: Vec<Gate>,
}

/// Counter readings of a route at one moment; a step's evidence is now minus its entry reading.
#[derive(Debug, Clone, Default)]
pub struct Reading {
    requests: [u64; 2],
    errors_5xx: [u64; 2],
    latency: [Vec<(f64, u64)>; 2],
    fallbacks: u64,
    /// match, mismatch
    compared: [u64; 2],
    shadow_latency: [Vec<(f64, u64)>; 2],
}

fn buckets(h: &Histogram) -> Vec<(f64, u64)> {
    h.metric()
        .get_histogram()
        .get_bucket()
        .iter()
        .map(|b| (b.upper_bound(), b.cumulative_count()))
        .chain(std::iter::once((f64::INFINITY, h.get_sample_count())))
        .collect()
}

fn minus(now: &[(f64, u64)], then: &[(f64, u64)]) -> Vec<(f64, u64)> {
    now.iter()
        .enumerate()
        .map(|(i, (le, c))| (*le, c.saturating_sub(then.get(i).map_or(0, |t| t.1))))
        .collect()
}

fn p99(buckets: &[(f64, u64)]) -> Option<f64> {
    crate::stats::quantile(buckets, 0.99).filter(|v| v.is_finite())
}

impl Reading {
    fn of(m: &RouteMetric) -> Reading {
        let sides = [Some(&m.legacy), m.new.as_ref()];
        let shadow = m.shadow.as_ref();
        Reading {
            requests: sides.map(|s| s.map_or(0, |s| s.total())),
            errors_5xx: sides.map(|s| s.map_or(0, |s| s.errors_5xx())),
            latency: sides.map(|s| s.map(|s| buckets(s.histogram())).unwrap_or_default()),
            // A rate limit is the team's own cap, not the service failing: not evidence.
            fallbacks: m.resilience.as_ref().map_or(0, |r| {
                let counts = r.fallback_counts().into_iter().zip(Reason::ALL);
                counts
                    .filter(|(_, why)| *why != Reason::RateLimited)
                    .map(|(n, _)| n)
                    .sum()
            }),
            compared: shadow.map_or([0, 0], |s| {
                let r = s.results();
                [r[0], r[1]]
            }),
            shadow_latency: [
                shadow.map(|s| buckets(&s.legacy_latency)).unwrap_or_default(),
                shadow.map(|s| buckets(&s.new_latency)).unwrap_or_default(),
            ],
        }
    }

    /// What happened between `then` and now, for a route at `step`.
    fn since(&self, then: &Reading, step: Step) -> Evidence {
        let d = |a: u64, b: u64| a.saturating_sub(b);
        let (new_lat, legacy_lat) = if step == Step::Shadow {
            (&self.shadow_latency[1], &self.shadow_latency[0])
        } else {
            (&self.latency[1], &self.latency[0])
        };
        let (new_then, legacy_then) = if step == Step::Shadow {
            (&then.shadow_latency[1], &then.shadow_latency[0])
        } else {
            (&then.latency[1], &then.latency[0])
        };
        let matched = d(self.compared[0], then.compared[0]);
        Evidence {
            compared: matched + d(self.compared[1], then.compared[1]),
            matched,
            new_requests: d(self.requests[1], then.requests[1]),
            new_5xx: d(self.errors_5xx[1], then.errors_5xx[1]),
            legacy_requests: d(self.requests[0], then.requests[0]),
            legacy_5xx: d(self.errors_5xx[0], then.errors_5xx[0]),
            fallbacks: d(self.fallbacks, then.fallbacks),
            new_p99: p99(&minus(new_lat, new_then)),
            legacy_p99: p99(&minus(legacy_lat, legacy_then)),
        }
    }
}

/// The figures of a route as Prometheus sums them over every replica it scrapes. The metric
/// names are the contract between the proxies and this controller (CONTROL-PLANE.md).
pub async fn prometheus_reading(client: &reqwest::Client, base: &str, route: &str) -> Result<Reading, String> {
    let r = route.replace('\\', "\\\\").replace('"', "\\\"");
    let scalar = |q: String| async move { query(client, base, &q).await.map(|v| first_value(&v)) };
    let histogram = |metric: &'static str, side: &'static str| {
        let q = format!("sum by (le) ({metric}_bucket{{route=\"{r}\",side=\"{side}\"}})");
        async move { query(client, base, &q).await.map(|v| bucket_values(&v)) }
    };
    let requests =
        |side: &str, status: &str| format!("sum(strangler_requests_total{{route=\"{r}\",side=\"{side}\"{status}}})");
    Ok(Reading {
        requests: [
            scalar(requests("legacy", "")).await?,
            scalar(requests("new", "")).await?,
        ],
        errors_5xx: [
            scalar(requests("legacy", ",status=\"5xx\"")).await?,
            scalar(requests("new", ",status=\"5xx\"")).await?,
        ],
        latency: [
            histogram("strangler_request_duration_seconds", "legacy").await?,
            histogram("strangler_request_duration_seconds", "new").await?,
        ],
        fallbacks: scalar(format!(
            "sum(strangler_fallbacks_total{{route=\"{r}\",reason!=\"rate_limited\"}})"
        ))
        .await?,
        compared: [
            scalar(format!("sum(strangler_shadow_total{{route=\"{r}\",result=\"match\"}})")).await?,
            scalar(format!(
                "sum(strangler_shadow_total{{route=\"{r}\",result=\"mismatch\"}})"
            ))
            .await?,
        ],
        shadow_latency: [
            histogram("strangler_shadow_latency_seconds", "legacy").await?,
            histogram("strangler_shadow_latency_seconds", "new").await?,
        ],
    })
}

async fn query(client: &reqwest::Client, base: &str, q: &str) -> Result<Value, String> {
    let url = reqwest::Url::parse_with_params(&format!("{}/api/v1/query", base.trim_end_matches('/')), &[("query", q)])
        .map_err(|e| format!("bad Prometheus URL {base}: {e}"))?;
    let resp = client
        .get(url.clone())
        .send()
        .await
        .map_err(|e| format!("can't reach Prometheus at {base}: {e}"))?;
    let v: Value = resp.json().await.map_err(|e| format!("{url}: not JSON: {e}"))?;
    if v["status"] != "success" {
        return Err(format!("{url}: {q}: {}", v["error"]));
    }
    Ok(v)
}

/// The value of a one-series (or empty) instant vector, as a count.
fn first_value(v: &Value) -> u64 {
    v["data"]["result"][0]["value"][1]
        .as_str()
        .and_then(|s| s.parse::<f64>().ok())
        .map_or(0, |f| f.max(0.0).round() as u64)
}

/// `sum by (le)` of a histogram as cumulative buckets, sorted by bound.
fn bucket_values(v: &Value) -> Vec<(f64, u64)> {
    let mut out: Vec<(f64, u64)> = v["data"]["result"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|s| {
            let le = s["metric"]["le"].as_str()?;
            let le = if le == "+Inf" { f64::INFINITY } else { le.parse().ok()? };
            let n = s["value"][1].as_str()?.parse::<f64>().ok()?;
            Some((le, n.max(0.0).round() as u64))
        })
        .collect();
    out.sort_by(|a, b| a.0.total_cmp(&b.0));
    out
}

/// A move decided in one round, made after the round's lock is released.
struct Move {
    route: String,
    to: Step,
    direction: &'static str,
    reason: &'static str,
    detail: String,
    pause: bool,
    gates: Vec<Gate>,
}

/// What the autopilot knows of one route between decisions.
struct Track {
    /// The step the route was at when last seen (`None`: not one of its steps).
    step: Option<usize>,
    since: Instant,
    since_unix: f64,
    entry: Reading,
    /// The evidence counted at this step so far (`gates::evidence_count`).
    evidence: u64,
    gates: Vec<Gate>,
    verdict: String,
    last: Option<Transition>,
    paused_why: Option<String>,
}

/// The autopilot of one process: its view of each route, and what it needs to act.
pub struct Autopilot {
    live: Arc<ArcSwap<Live>>,
    /// In a proxy: applies each edit at once. `None` in the external controller, whose
    /// replicas pick the edit up by watching the file.
    reloader: Option<Arc<Reloader>>,
    /// The rules file.
    path: PathBuf,
    /// In the external controller: decide (it has no proxy of its own to decide for).
    external: bool,
    metrics: Arc<Metrics>,
    /// `state_dir/autopilot.jsonl`; `None` when `state_dir` is not writable.
    journal: Option<PathBuf>,
    routes: Mutex<HashMap<String, Track>>,
    /// The latest transitions, oldest first, for the dashboard's timeline.
    recent: Mutex<VecDeque<Transition>>,
}

/// What an admin action asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Pause,
    Resume,
    Promote,
    Rollback,
}

impl Action {
    pub fn parse(s: &str) -> Option<Action> {
        Some(match s {
            "pause" => Action::Pause,
            "resume" => Action::Resume,
            "promote" => Action::Promote,
            "rollback" => Action::Rollback,
            _ => return None,
        })
    }
}

/// Why an action or a move did not happen.
#[derive(Debug, thiserror::Error)]
pub enum ActError {
    #[error("no route \"{0}\" with a rollout")]
    NoRollout(String),
    #[error("route \"{0}\" is at {1}, which is not one of its steps; move it to a step by hand")]
    OffSteps(String, String),
    #[error("route \"{0}\" is already at its {1} step")]
    AtEnd(String, &'static str),
    #[error("rules.yaml changed since the rules in force were loaded (a pending or refused edit); try again once it is applied")]
    FileAhead,
    #[error(transparent)]
    Edit(#[from] edit::EditError),
    #[error(transparent)]
    Write(#[from] edit::WriteError),
    #[error("the edit was written but the reload refused it: {0}")]
    Refused(String),
}

impl Autopilot {
    /// The autopilot of a proxy: its own figures, its own reloader.
    pub fn new(
        live: Arc<ArcSwap<Live>>,
        reloader: Arc<Reloader>,
        metrics: Arc<Metrics>,
        state: &StateDir,
    ) -> Autopilot {
        let path = reloader.path().to_path_buf();
        Autopilot::build(live, Some(reloader), path, false, metrics, state)
    }

    /// The external controller's: the figures come from Prometheus (`tick_with`), and the file
    /// is re-read every decision.
    pub fn external(path: PathBuf, metrics: Arc<Metrics>) -> Result<Autopilot, crate::config::ConfigErrors> {
        let loaded = crate::rules::load(&path)?;
        let live = Arc::new(ArcSwap::from_pointee(Live::first(loaded.rules, loaded.hash, &metrics)));
        let state = StateDir::open(&live.load().rules.discovery.state_dir);
        Ok(Autopilot::build(live, None, path, true, metrics, &state))
    }

    fn build(
        live: Arc<ArcSwap<Live>>,
        reloader: Option<Arc<Reloader>>,
        path: PathBuf,
        external: bool,
        metrics: Arc<Metrics>,
        state: &StateDir,
    ) -> Autopilot {
        let journal = state.path(JOURNAL);
        Autopilot {
            live,
            reloader,
            path,
            external,
            metrics,
            journal,
            routes: Mutex::new(HashMap::new()),
            recent: Mutex::new(VecDeque::with_capacity(RECENT)),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Track>> {
        self.routes.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The rules in force (in the external controller: re-read from the file when it changed).
    pub fn rules(&self) -> Arc<Live> {
        if self.external {
            let live = self.live.load_full();
            match crate::rules::load(&self.path) {
                Ok(l) if l.hash != live.config_hash => {
                    self.live
                        .store(Arc::new(Live::replace(&live, l.rules, l.hash, &self.metrics)));
                }
                Ok(_) => {}
                Err(e) => tracing::warn!("{}: not acting on a file that does not load: {e}", self.path.display()),
            }
        }
        self.live.load_full()
    }

    /// Judge every route with a rollout once from this process's own figures.
    pub fn tick(&self) {
        let live = self.live.load_full();
        let readings = live
            .rules
            .routes
            .iter()
            .enumerate()
            .filter(|(_, r)| r.rollout.is_some())
            .map(|(id, r)| (r.name.clone(), Reading::of(live.handles.route(Some(id)))))
            .collect();
        self.tick_with(&live, readings);
    }

    /// Judge every route with a rollout once on these readings, and move those whose evidence says so.
    pub fn tick_with(&self, live: &Live, mut readings: HashMap<String, Reading>) {
        let auto = &live.rules.autopilot;
        let acting = auto.enabled && auto.external == self.external;
        let mut moves: Vec<Move> = Vec::new();
        let mut adopted: Vec<Transition> = Vec::new();
        {
            let mut tracks = self.lock();
            tracks.retain(|name, _| live.rules.routes.iter().any(|r| &r.name == name && r.rollout.is_some()));
            for route in &live.rules.routes {
                let Some(rollout) = &route.rollout else { continue };
                let Some(reading) = readings.remove(&route.name) else {
                    continue;
                };
                let step = rollout.current(route);
                let track = tracks.entry(route.name.clone()).or_insert_with(|| Track {
                    step,
                    since: Instant::now(),
                    since_unix: now_unix(),
                    entry: reading.clone(),
                    evidence: 0,
                    gates: Vec::new(),
                    verdict: String::new(),
                    last: None,
                    paused_why: None,
                });
                if track.step != step {
                    // The file moved it (our edit applied, or a person's): a new step, new evidence.
                    let ours = track.last.as_ref().is_some_and(|l| {
                        Some(l.to.as_str()) == step.map(|i| rollout.steps[i].label()).as_deref()
                            && now_unix() - l.at < 60.0
                    });
                    if !ours {
                        let label = |s: Option<usize>| s.map_or("off-steps".to_string(), |i| rollout.steps[i].label());
                        adopted.push(Transition {
                            at: now_unix(),
                            route: route.name.clone(),
                            from: label(track.step),
                            to: label(step),
                            direction: "adopt",
                            reason: "hand_edit",
                            detail: "the file was edited by hand: the autopilot goes on from the new step".into(),
                            gates: Vec::new(),
                        });
                    }
                    track.step = step;
                    track.since = Instant::now();
                    track.since_unix = now_unix();
                    track.entry = reading.clone();
                    track.evidence = 0;
                    track.gates.clear();
                }
                if !rollout.paused {
                    track.paused_why = None;
                }
                self.metrics
                    .rollout_state(&route.name, step.map_or(-1, |s| s as i64), rollout.paused);
                let Some(at) = step else {
                    track.verdict = format!(
                        "at {}, not one of its steps: waiting for a person to move it",
                        mode_label(route)
                    );
                    continue;
                };
                let current = rollout.steps[at];
                let ev = reading.since(&track.entry, current);
                track.evidence = gates::evidence_count(current, &ev);
                let last = at + 1 == rollout.steps.len();
                let (verdict, gates) =
                    gates::judge(current, last, &rollout.gates, &ev, track.since.elapsed(), rollout.hold);
                track.gates = gates.clone();
                if rollout.paused {
                    track.verdict = format!(
                        "paused{}",
                        track.paused_why.as_ref().map_or(String::new(), |w| format!(": {w}"))
                    );
                    continue;
                }
                if !acting {
                    track.verdict = match (auto.enabled, auto.external) {
                        (false, _) => "autopilot disabled".into(),
                        (true, true) => "decided by the external controller (strangler autopilot)".into(),
                        (true, false) => {
                            "decided in process by the proxies (set autopilot.controller: external)".into()
                        }
                    };
                    continue;
                }
                match verdict {
                    Verdict::Wait(why) => {
                        tracing::debug!(target: "autopilot", route = %route.name, step = %current.label(), "waiting: {why}");
                        track.verdict = why;
                    }
                    Verdict::Promote => {
                        track.verdict = "promoting".into();
                        let detail = format!(
                            "every gate held for {}s over {} requests",
                            rollout.hold.as_secs(),
                            gates::evidence_count(current, &ev)
                        );
                        moves.push(Move {
                            route: route.name.clone(),
                            to: rollout.steps[at + 1],
                            direction: "promote",
                            reason: "gates_held",
                            detail,
                            pause: false,
                            gates,
                        });
                    }
                    Verdict::Fail { gate, why } => {
                        track.verdict = format!("failing: {why}");
                        let (to, direction) = match rollout.on_failure {
                            OnFailure::Rollback => (rollout.steps[0], "rollback"),
                            OnFailure::Pause => (current, "pause"),
                        };
                        moves.push(Move {
                            route: route.name.clone(),
                            to,
                            direction,
                            reason: gate,
                            detail: why,
                            pause: true,
                            gates,
                        });
                    }
                }
            }
        }
        for t in &adopted {
            self.record(t);
        }
        for m in moves {
            let (name, direction) = (m.route.clone(), m.direction);
            if let Err(e) = self.apply(&m.route, m.to, m.pause, m.direction, m.reason, m.detail, m.gates) {
                tracing::warn!(route = %name, "autopilot: {direction} not done: {e}");
                if let Some(t) = self.lock().get_mut(&name) {
                    t.verdict = format!("{direction} not done: {e}");
                }
            }
        }
    }

    /// Move `name` to `to` (and pause it when `pause`) by editing the file, then reload.
    #[allow(clippy::too_many_arguments)]
    fn apply(
        &self,
        name: &str,
        to: Step,
        pause: bool,
        direction: &'static str,
        reason: &'static str,
        detail: String,
        gates: Vec<Gate>,
    ) -> Result<(), ActError> {
        let live = self.live.load_full();
        let path = self.path.clone();
        let route = live
            .rules
            .routes
            .iter()
            .find(|r| r.name == name && r.rollout.is_some())
            .ok_or_else(|| ActError::NoRollout(name.into()))?;
        let from = mode_label(route);
        let bytes = std::fs::read(&path).map_err(edit::WriteError::Io)?;
        // Decide only on the bytes in force: a newer file is a person's edit still on its way
        // (or refused), and theirs wins.
        if crate::rules::config_hash(&String::from_utf8_lossy(&bytes)) != live.config_hash {
            return Err(ActError::FileAhead);
        }
        let text = String::from_utf8_lossy(&bytes).into_owned();
        let mut new = if mode_label(route) == to.label() && route_step_is(route, to) {
            text.clone()
        } else {
            edit::set_step(&path, &text, name, to)?
        };
        let paused_now = route.rollout.as_ref().is_some_and(|r| r.paused);
        if pause != paused_now {
            new = edit::set_paused(&path, &new, name, pause)?;
        }
        if new == text {
            return Ok(());
        }
        edit::write_if_unchanged(&path, &bytes, &new)?;
        if let Some(rollout) = &route.rollout {
            let step = rollout.steps.iter().position(|s| *s == to).map_or(-1, |i| i as i64);
            self.metrics.rollout_state(name, step, pause);
        }
        let transition = Transition {
            at: now_unix(),
            route: name.to_string(),
            from,
            to: to.label(),
            direction,
            reason,
            detail,
            gates,
        };
        self.record(&transition);
        if let Some(t) = self.lock().get_mut(name) {
            t.paused_why = pause.then(|| transition.detail.clone());
            t.last = Some(transition);
        }
        match &self.reloader {
            Some(r) => match r.reload(Trigger::Autopilot) {
                Outcome::Refused(e) => Err(ActError::Refused(e.to_string())),
                _ => Ok(()),
            },
            None => {
                self.rules();
                Ok(())
            }
        }
    }

    /// Journal, log, count and remember a transition.
    fn record(&self, t: &Transition) {
        tracing::info!(
            target: "autopilot",
            route = %t.route,
            from = %t.from,
            to = %t.to,
            direction = t.direction,
            reason = t.reason,
            "{}",
            t.detail
        );
        self.metrics.rollout_transition(&t.route, t.direction, t.reason);
        {
            let mut recent = self.recent.lock().unwrap_or_else(|p| p.into_inner());
            if recent.len() == RECENT {
                recent.pop_front();
            }
            recent.push_back(t.clone());
        }
        let Some(path) = &self.journal else { return };
        let line = match serde_json::to_string(t) {
            Ok(l) => l,
            Err(_) => return,
        };
        let written = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .and_then(|mut f| writeln!(f, "{line}"));
        if let Err(e) = written {
            tracing::warn!("autopilot journal {} not written: {e}", path.display());
        }
    }

    /// A person's action through the admin API, done by editing the file like any other move.
    pub fn act(&self, name: &str, action: Action) -> Result<Value, ActError> {
        let live = self.live.load_full();
        let route = live
            .rules
            .routes
            .iter()
            .find(|r| r.name == name && r.rollout.is_some())
            .ok_or_else(|| ActError::NoRollout(name.into()))?;
        let rollout = route.rollout.as_ref().expect("filtered above");
        let at = rollout.current(route);
        let step_of = |i: usize| rollout.steps[i];
        let (to, pause, direction) = match action {
            Action::Pause => (at.map(step_of), true, "pause"),
            Action::Resume => (at.map(step_of), false, "resume"),
            Action::Promote => {
                let i = at.ok_or_else(|| ActError::OffSteps(name.into(), mode_label(route)))?;
                if i + 1 == rollout.steps.len() {
                    return Err(ActError::AtEnd(name.into(), "last"));
                }
                (Some(step_of(i + 1)), rollout.paused, "promote")
            }
            Action::Rollback => {
                let i = at.ok_or_else(|| ActError::OffSteps(name.into(), mode_label(route)))?;
                if i == 0 {
                    return Err(ActError::AtEnd(name.into(), "first"));
                }
                (Some(step_of(i - 1)), rollout.paused, "rollback")
            }
        };
        let to = to.ok_or_else(|| ActError::OffSteps(name.into(), mode_label(route)))?;
        self.apply(
            name,
            to,
            pause,
            direction,
            "manual",
            format!("{direction} asked through the admin API"),
            Vec::new(),
        )?;
        Ok(json!({"route": name, "action": direction, "step": to.label(), "paused": pause}))
    }

    /// `GET /api/autopilot`: each route's step, since when, its progress toward the next (time
    /// held, evidence counted), its gates, the last transition and whether it is paused; and the
    /// latest transitions of every route, newest first.
    pub fn view(&self) -> Value {
        let live = self.live.load_full();
        let auto = &live.rules.autopilot;
        let tracks = self.lock();
        let routes: Vec<Value> = live
            .rules
            .routes
            .iter()
            .filter_map(|r| Some((r, r.rollout.as_ref()?)))
            .map(|(r, rollout)| {
                let t = tracks.get(&r.name);
                let at = rollout.current(r);
                let since = t.map_or(now_unix(), |t| t.since_unix);
                json!({
                    "route": r.name,
                    "step": at.map(|i| rollout.steps[i].label()),
                    "step_index": at,
                    "mode": r.mode.as_str(),
                    "steps": rollout.steps.iter().map(|s| s.label()).collect::<Vec<_>>(),
                    "since": since,
                    "held_s": t.map_or(0.0, |t| t.since.elapsed().as_secs_f64()),
                    "hold_s": rollout.hold.as_secs_f64(),
                    "next_decision_at": since + rollout.hold.as_secs_f64(),
                    "gates": t.map(|t| t.gates.clone()).unwrap_or_default(),
                    "evidence": t.map_or(0, |t| t.evidence),
                    "min_requests": rollout.gates.min_requests,
                    "status": t.map_or(String::new(), |t| t.verdict.clone()),
                    "paused": rollout.paused,
                    "paused_reason": t.and_then(|t| t.paused_why.clone()),
                    "last_transition": t.and_then(|t| t.last.clone()),
                })
            })
            .collect();
        drop(tracks);
        let recent: Vec<Transition> = self
            .recent
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .rev()
            .cloned()
            .collect();
        json!({
            "enabled": auto.enabled,
            "controller": if auto.external { "external" } else { "in_process" },
            "interval_s": auto.interval.as_secs_f64(),
            "routes": routes,
            "transitions": recent,
        })
    }
}

/// A route's mode as a step label: `shadow`, `25`, `migrated`.
fn mode_label(route: &Route) -> String {
    match (route.mode, route.canary.as_ref()) {
        (crate::config::Mode::Canary, Some(c)) => Step::Canary(c.percent).label(),
        (m, _) => m.as_str().to_string(),
    }
}

fn route_step_is(route: &Route, step: Step) -> bool {
    let r = Rollout {
        steps: vec![step],
        hold: Duration::ZERO,
        gates: Default::default(),
        on_failure: OnFailure::Pause,
        paused: false,
    };
    r.current(route) == Some(0)
}

/// Runs `Autopilot::tick` every `autopilot.interval`.
pub struct AutopilotService {
    pub autopilot: Arc<Autopilot>,
}

#[async_trait]
impl BackgroundService for AutopilotService {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        loop {
            let every = self.autopilot.live.load().rules.autopilot.interval;
            tokio::select! {
                _ = shutdown.changed() => return,
                _ = tokio::time::sleep(every) => {
                    let a = self.autopilot.clone();
                    // File reads, writes and the reload's compile: off the async threads.
                    let _ = tokio::task::spawn_blocking(move || a.tick()).await;
                }
            }
        }
    }
}
