//! Learned noise and recent mismatches kept in `state_dir/shadow.json`: the format, the load at
//! start, and the save (every minute and at shutdown) that first folds in what is on disk.
//!
//! Kept per route name, with what the route's copies compared (the legacy upstream's answers
//! against the service's). A saved route that no longer exists, or that now compares other
//! upstreams, is not loaded: samples of another service would mislead. Loading merges (noise is
//! a union, mismatches a union by request kept newest first), so the save can fold in a file
//! another process wrote meanwhile: after a graceful upgrade the new process loads at start what
//! the old one last saved, and its next save picks up what the old one saved at its shutdown.

use std::collections::BTreeMap;
use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{mismatch, Mismatch, RouteShadow, MAX_NOISE};
use crate::diff::Seg;
use crate::rules::{Route, RuleSet};
use crate::state::{Stamp, StateDir};

/// The file's name in `state_dir`.
pub const FILE: &str = "shadow.json";
/// The format's version; a file of another version is set aside, not read.
pub const VERSION: u32 = 1;
const WHAT: &str = "learned shadow state";

/// `shadow.json`.
#[derive(Debug, Serialize, Deserialize)]
struct Saved {
    version: u32,
    routes: BTreeMap<String, SavedRoute>,
}

/// One shadowed route's state.
#[derive(Debug, Serialize, Deserialize)]
struct SavedRoute {
    /// What its copies compared: the legacy upstream's answers against the service's (names
    /// from rules.yaml).
    legacy: String,
    service: Option<String>,
    /// Learned noise paths, each a list of steps: a key as a string, `[*]` as null.
    noise: Vec<Vec<Value>>,
    /// The recent mismatches, oldest first, as `GET /api/mismatches` shows them.
    mismatches: Vec<Mismatch>,
}

/// Reads and writes `shadow.json` for one process.
pub struct Store {
    state: StateDir,
    /// What the last save wrote (a signature of memory, and the file's stamp): a save with
    /// nothing new in memory nor on disk writes nothing.
    last: Mutex<Option<(u64, Option<Stamp>)>>,
}

impl Store {
    /// Load what `state` holds into the routes' shadow state (`shadows` is indexed like
    /// `rules.routes`, as `Live::shadow_states`).
    pub fn open(state: StateDir, rules: &RuleSet, shadows: &[Option<Arc<RouteShadow>>]) -> Store {
        let store = Store {
            state,
            last: Mutex::new(None),
        };
        let (routes, noise, mismatches) = store.merge(rules, shadows, true);
        if routes > 0 {
            tracing::info!(
                "shadow: {noise} learned noise paths and {mismatches} mismatches of {routes} routes loaded from {FILE}"
            );
        }
        store
    }

    /// Fold in what is on disk, then write the routes' state. Nothing is written when nothing
    /// changed since the last save, in memory or on disk.
    pub fn save(&self, rules: &RuleSet, shadows: &[Option<Arc<RouteShadow>>]) {
        if self.state.dir().is_none() {
            return;
        }
        let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        let on_disk = self.state.stamp(FILE);
        if *last == Some((signature(rules, shadows), on_disk)) {
            return;
        }
        if last.is_none_or(|(_, stamp)| stamp != on_disk) {
            self.merge(rules, shadows, false);
        }
        // Before the snapshot: a mismatch kept in between makes the next save write again.
        let signed = signature(rules, shadows);
        let text = match serde_json::to_vec(&snapshot(rules, shadows)) {
            Ok(t) => t,
            Err(e) => return tracing::warn!("shadow state not saved: {e}"),
        };
        match self.state.write(FILE, &text) {
            Ok(stamp) => *last = Some((signed, stamp)),
            Err(e) => tracing::warn!("shadow state not saved to {FILE} in state_dir: {e}"),
        }
    }

    /// Fold the file's state into the routes that still compare the same upstreams. Returns the
    /// routes, noise paths and mismatches taken.
    fn merge(&self, rules: &RuleSet, shadows: &[Option<Arc<RouteShadow>>], announce: bool) -> (usize, usize, usize) {
        let mut taken = (0, 0, 0);
        let Some(saved) = self.state.read(FILE, WHAT, parse) else {
            return taken;
        };
        for (route, shadow) in rules.routes.iter().zip(shadows) {
            let (Some(shadow), Some(s)) = (shadow, saved.routes.get(&route.name)) else {
                continue;
            };
            let (legacy, service) = compared(rules, route);
            if s.legacy != legacy || s.service.as_deref() != service {
                if announce {
                    tracing::info!(
                        route = %route.name,
                        "shadow: the saved noise and mismatches compared {} with {}; the route now compares {legacy} with {}: starting fresh",
                        s.legacy,
                        s.service.as_deref().unwrap_or("(none)"),
                        service.unwrap_or("(none)"),
                    );
                }
                continue;
            }
            let noise: Vec<Vec<Seg>> = s.noise.iter().filter_map(|p| decode(p)).collect();
            let (n, m) = shadow.absorb(noise, &s.mismatches);
            taken = (taken.0 + 1, taken.1 + n, taken.2 + m);
        }
        taken
    }
}

fn parse(bytes: &[u8]) -> Result<Saved, String> {
    #[derive(Deserialize)]
    struct Version {
        version: u32,
    }
    let v: Version = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
    if v.version != VERSION {
        return Err(format!("version {}, this build reads {VERSION}", v.version));
    }
    serde_json::from_slice(bytes).map_err(|e| e.to_string())
}

/// The names of what a route's copies compare: the legacy upstream and the service.
fn compared<'r>(rules: &'r RuleSet, route: &Route) -> (&'r str, Option<&'r str>) {
    (
        rules.upstreams[rules.legacy].name.as_str(),
        route.service.map(|s| rules.upstreams[s].name.as_str()),
    )
}

fn snapshot(rules: &RuleSet, shadows: &[Option<Arc<RouteShadow>>]) -> Saved {
    let routes = rules
        .routes
        .iter()
        .zip(shadows)
        .filter_map(|(route, shadow)| {
            let shadow = shadow.as_ref()?;
            let (legacy, service) = compared(rules, route);
            let noise = shadow
                .noise
                .read()
                .map(|n| n.iter().map(|p| encode(p)).collect())
                .unwrap_or_default();
            let mismatches = shadow
                .mismatches
                .lock()
                .map(|m| m.iter().cloned().collect())
                .unwrap_or_default();
            Some((
                route.name.clone(),
                SavedRoute {
                    legacy: legacy.to_string(),
                    service: service.map(str::to_string),
                    noise,
                    mismatches,
                },
            ))
        })
        .collect();
    Saved {
        version: VERSION,
        routes,
    }
}

/// Changes when a route's noise or mismatches change (or the routes, or what they compare).
fn signature(rules: &RuleSet, shadows: &[Option<Arc<RouteShadow>>]) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    for (route, shadow) in rules.routes.iter().zip(shadows) {
        let Some(shadow) = shadow else { continue };
        (route.name.as_str(), compared(rules, route)).hash(&mut h);
        shadow.noise.read().map(|n| n.len()).unwrap_or_default().hash(&mut h);
        if let Ok(ring) = shadow.mismatches.lock() {
            ring.len().hash(&mut h);
            ring.back()
                .map(|m| (m.at_unix.to_bits(), m.request_id.as_str()))
                .hash(&mut h);
        }
    }
    h.finish()
}

fn encode(path: &[Seg]) -> Vec<Value> {
    path.iter()
        .map(|s| match s {
            Seg::Key(k) => Value::String(k.clone()),
            Seg::Index(i) => Value::from(*i),
            Seg::Any => Value::Null,
        })
        .collect()
}

fn decode(path: &[Value]) -> Option<Vec<Seg>> {
    path.iter()
        .map(|v| match v {
            Value::String(k) => Some(Seg::Key(k.clone())),
            Value::Number(n) => Some(Seg::Index(usize::try_from(n.as_u64()?).ok()?)),
            Value::Null => Some(Seg::Any),
            _ => None,
        })
        .collect()
}

/// The same mismatch, read back: the same request at the same moment (a float read back from
/// JSON may differ in its last bit).
fn same(a: &Mismatch, b: &Mismatch) -> bool {
    a.request_id == b.request_id && a.method == b.method && a.path == b.path && (a.at_unix - b.at_unix).abs() < 1e-3
}

impl RouteShadow {
    /// Add saved noise paths (up to `MAX_NOISE`) and mismatches (the newest `mismatch::RING`
    /// of both); returns how many of each were new.
    fn absorb(&self, noise: Vec<Vec<Seg>>, mismatches: &[Mismatch]) -> (usize, usize) {
        let new_noise: Vec<Vec<Seg>> = match self.noise.read() {
            Ok(known) => noise.into_iter().filter(|p| !known.contains(p)).collect(),
            Err(_) => Vec::new(),
        };
        let mut added = (0, 0);
        // The write lock only when there is something to add: copies read it to compare.
        if !new_noise.is_empty() {
            if let Ok(mut known) = self.noise.write() {
                for p in new_noise {
                    if known.len() < MAX_NOISE && !known.contains(&p) {
                        known.push(p);
                        added.0 += 1;
                    }
                }
            }
        }
        if let Ok(mut ring) = self.mismatches.lock() {
            for m in mismatches {
                if !ring.iter().any(|k| same(k, m)) {
                    ring.push_back(m.clone());
                    added.1 += 1;
                }
            }
            if added.1 > 0 {
                ring.make_contiguous().sort_by(|a, b| a.at_unix.total_cmp(&b.at_unix));
                while ring.len() > mismatch::RING {
                    ring.pop_front();
                }
            }
        }
        added
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn rules(service: &str) -> RuleSet {
        let text = format!(
            "legacy: mono\nupstreams:\n  mono: {{ url: \"http://127.0.0.1:1\" }}\n  svc: {{ url: \"http://127.0.0.1:2\" }}\n  other: {{ url: \"http://127.0.0.1:3\" }}\nroutes:\n  - {{ name: orders, match: {{ path: \"/api/orders/{{id}}\" }}, mode: shadow, service: {service} }}\n  - {{ name: stock, match: {{ prefix: /api/stock }}, mode: shadow, service: svc }}\n"
        );
        let file = Path::new("rules.yaml");
        crate::rules::compile(file, &crate::config::parse(file, &text).unwrap()).unwrap()
    }

    fn shadows(rules: &RuleSet) -> Vec<Option<Arc<RouteShadow>>> {
        rules
            .routes
            .iter()
            .map(|r| Some(Arc::new(RouteShadow::new(&r.name))))
            .collect()
    }

    fn mismatch(route: &str, id: &str, at: f64) -> Mismatch {
        Mismatch {
            at_unix: at,
            route: route.into(),
            method: "GET".into(),
            path: "/api/orders/1".into(),
            request_id: id.into(),
            trace_id: String::new(),
            request_headers: Default::default(),
            status: serde_json::json!({"legacy": 200, "new": 200}),
            differences: Vec::new(),
            patch: Vec::new(),
            legacy_body: String::new(),
            new_body: String::new(),
        }
    }

    fn learn(shadow: &RouteShadow, path: &str) {
        shadow
            .noise
            .write()
            .unwrap()
            .push(crate::diff::parse_path(path).unwrap());
    }

    fn ids(shadow: &RouteShadow) -> Vec<String> {
        let mut v: Vec<String> = shadow.mismatches(1000).into_iter().map(|m| m.request_id).collect();
        v.reverse();
        v
    }

    #[test]
    fn noise_paths_survive_the_round_trip_whatever_their_keys() {
        for path in [
            vec![Seg::Key("served_at".into())],
            vec![Seg::Key("a]b\"c".into()), Seg::Any, Seg::Key("".into()), Seg::Index(3)],
            vec![],
        ] {
            assert_eq!(decode(&encode(&path)), Some(path.clone()), "{path:?}");
        }
        assert_eq!(decode(&[Value::Bool(true)]), None);
        assert_eq!(decode(&[serde_json::json!(-1)]), None);
    }

    #[test]
    fn a_restart_keeps_noise_and_mismatches_of_routes_that_compare_the_same_upstreams() {
        let tmp = tempfile::tempdir().unwrap();
        let before = rules("svc");
        let live = shadows(&before);
        learn(live[0].as_ref().unwrap(), "$.served_at");
        learn(live[1].as_ref().unwrap(), "$.items[*].at");
        live[0].as_ref().unwrap().keep(mismatch("orders", "r-1", 1.5));
        live[1].as_ref().unwrap().keep(mismatch("stock", "r-2", 2.5));
        let store = Store::open(StateDir::open(tmp.path()), &before, &live);
        store.save(&before, &live);

        // Same rules: everything back.
        let again = shadows(&before);
        Store::open(StateDir::open(tmp.path()), &before, &again);
        assert_eq!(again[0].as_ref().unwrap().learned_noise(), ["$.served_at"]);
        assert_eq!(again[1].as_ref().unwrap().learned_noise(), ["$.items[*].at"]);
        assert_eq!(ids(again[0].as_ref().unwrap()), ["r-1"]);

        // `orders` now compares another service: it starts fresh; `stock` keeps its state.
        let changed = rules("other");
        let after = shadows(&changed);
        Store::open(StateDir::open(tmp.path()), &changed, &after);
        assert!(after[0].as_ref().unwrap().learned_noise().is_empty());
        assert!(ids(after[0].as_ref().unwrap()).is_empty());
        assert_eq!(ids(after[1].as_ref().unwrap()), ["r-2"]);
    }

    #[test]
    fn a_save_folds_in_what_another_process_wrote_and_keeps_the_newest() {
        let tmp = tempfile::tempdir().unwrap();
        let rules = rules("svc");
        // The old process of an upgrade, and the new one, both started from the same file.
        let (old, new) = (shadows(&rules), shadows(&rules));
        let old_store = Store::open(StateDir::open(tmp.path()), &rules, &old);
        let new_store = Store::open(StateDir::open(tmp.path()), &rules, &new);
        let orders = |s: &[Option<Arc<RouteShadow>>]| Arc::clone(s[0].as_ref().unwrap());
        for i in 0..mismatch::RING {
            orders(&new).keep(mismatch("orders", &format!("new-{i}"), 1000.0 + i as f64));
        }
        new_store.save(&rules, &new);
        // The old one learns a little more and saves at its shutdown, over the new one's file.
        learn(&orders(&old), "$.served_at");
        orders(&old).keep(mismatch("orders", "old-last", 2000.0));
        orders(&old).keep(mismatch("orders", "old-first", 10.0));
        old_store.save(&rules, &old);
        // The new one's next save takes both in, and writes the union back.
        new_store.save(&rules, &new);
        assert_eq!(orders(&new).learned_noise(), ["$.served_at"]);
        let got = ids(&orders(&new));
        assert_eq!(got.len(), mismatch::RING);
        assert_eq!(got.last().map(String::as_str), Some("old-last"));
        assert!(!got.contains(&"old-first".to_string()), "the oldest fell off");
        assert!(!got.contains(&"new-0".to_string()), "the oldest fell off");
        let reread = shadows(&rules);
        Store::open(StateDir::open(tmp.path()), &rules, &reread);
        assert_eq!(ids(&orders(&reread)), got);
        // Nothing new anywhere: nothing written.
        let stamp = StateDir::open(tmp.path()).stamp(FILE);
        new_store.save(&rules, &new);
        assert_eq!(StateDir::open(tmp.path()).stamp(FILE), stamp);
    }

    #[test]
    fn another_version_is_set_aside() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::write(tmp.path().join(FILE), r#"{"version": 2, "routes": {}}"#).unwrap();
        let rules = rules("svc");
        let live = shadows(&rules);
        Store::open(StateDir::open(tmp.path()), &rules, &live);
        assert!(tmp.path().join(format!("{FILE}.corrupt")).is_file());
        assert!(!tmp.path().join(FILE).exists());
    }
}
