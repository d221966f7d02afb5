//! Judging a rollout step: the evidence gathered since the route entered it against the gates.
//! Pure: figures in, a verdict and each gate's standing out.

use std::time::Duration;

use serde::Serialize;

use crate::rules::{Gates, Step};

/// What happened on a route since it entered its step.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Evidence {
    /// Shadow copies compared, and how many matched.
    pub compared: u64,
    pub matched: u64,
    /// Requests each side answered, and their 5xx.
    pub new_requests: u64,
    pub new_5xx: u64,
    pub legacy_requests: u64,
    pub legacy_5xx: u64,
    /// Requests for the new side that the monolith served instead.
    pub fallbacks: u64,
    /// p99 latency of each side, in seconds (in shadow: of the copies and their legacy answers).
    pub new_p99: Option<f64>,
    pub legacy_p99: Option<f64>,
}

/// One gate's standing.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Gate {
    pub name: &'static str,
    pub value: Option<f64>,
    pub threshold: f64,
    /// `None` until there is evidence to judge it.
    pub ok: Option<bool>,
    pub evidence: u64,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    /// Every gate held for `hold` with `min_requests` behind it.
    Promote,
    /// A gate is clearly breached: the gate's name and what it read.
    Fail { gate: &'static str, why: String },
    /// Not yet: why.
    Wait(String),
}

/// 95% Wilson score interval of `k` successes in `n`.
fn wilson(k: u64, n: u64) -> (f64, f64) {
    if n == 0 {
        return (0.0, 1.0);
    }
    let (k, n, z) = (k as f64, n as f64, 1.96f64);
    let p = k / n;
    let denom = 1.0 + z * z / n;
    let center = (p + z * z / (2.0 * n)) / denom;
    let half = z * (p * (1.0 - p) / n + z * z / (4.0 * n * n)).sqrt() / denom;
    ((center - half).max(0.0), (center + half).min(1.0))
}

fn ratio(a: u64, b: u64) -> Option<f64> {
    (b > 0).then(|| a as f64 / b as f64)
}

/// The evidence that counts at a step: compared copies in shadow, the service's requests (with
/// those that fell back) in canary and migrated, the monolith's in legacy.
pub fn evidence_count(step: Step, ev: &Evidence) -> u64 {
    match step {
        Step::Legacy => ev.legacy_requests,
        Step::Shadow => ev.compared,
        Step::Canary(_) | Step::Migrated => ev.new_requests + ev.fallbacks,
    }
}

/// Judge a step. `last`: there is no step after it (nothing to promote to, failures still count).
/// Which breach a rollback names when several gates fail at once.
const BREACH_ORDER: [&str; 4] = ["error_rate", "fallback_rate", "match_rate", "p99"];

pub fn judge(step: Step, last: bool, g: &Gates, ev: &Evidence, held: Duration, hold: Duration) -> (Verdict, Vec<Gate>) {
    let n = evidence_count(step, ev);
    // Enough requests that one unlucky error doesn't decide.
    let clear = n >= (g.min_requests / 5).max(20).min(g.min_requests);
    let full = n >= g.min_requests;
    let mut gates = Vec::new();
    let mut failed: Vec<(&'static str, String)> = Vec::new();
    let mut fail = |gate: &'static str, why: String| failed.push((gate, why));

    let compared_gate = step == Step::Shadow || ev.compared > 0 && matches!(step, Step::Canary(_));
    if compared_gate {
        let value = ratio(ev.matched, ev.compared);
        let (_, upper) = wilson(ev.matched, ev.compared);
        if clear && ev.compared > 0 && upper < g.match_rate {
            fail(
                "match_rate",
                format!(
                    "match rate {:.2}% < {:.2}% over {} compared copies",
                    value.unwrap_or(0.0) * 100.0,
                    g.match_rate * 100.0,
                    ev.compared
                ),
            );
        }
        gates.push(Gate {
            name: "match_rate",
            value,
            threshold: g.match_rate,
            ok: value.filter(|_| ev.compared > 0).map(|v| v >= g.match_rate),
            evidence: ev.compared,
        });
    }
    if matches!(step, Step::Canary(_) | Step::Migrated) {
        let served = ev.new_requests;
        let legacy_rate = ratio(ev.legacy_5xx, ev.legacy_requests).unwrap_or(0.0);
        let value = ratio(ev.new_5xx, served).map(|r| r - legacy_rate);
        let (lower, _) = wilson(ev.new_5xx, served);
        if clear && served > 0 && lower - legacy_rate > g.error_rate {
            fail(
                "error_rate",
                format!(
                    "5xx rate {:.2}% vs the monolith's {:.2}% over {served} requests",
                    ratio(ev.new_5xx, served).unwrap_or(0.0) * 100.0,
                    legacy_rate * 100.0
                ),
            );
        }
        gates.push(Gate {
            name: "error_rate",
            value,
            threshold: g.error_rate,
            ok: value.map(|v| v <= g.error_rate),
            evidence: served,
        });
        let tried = ev.new_requests + ev.fallbacks;
        let value = ratio(ev.fallbacks, tried);
        let (lower, _) = wilson(ev.fallbacks, tried);
        if clear && tried > 0 && lower > g.fallback_rate {
            fail(
                "fallback_rate",
                format!("{:.2}% of {tried} requests fell back", value.unwrap_or(0.0) * 100.0),
            );
        }
        gates.push(Gate {
            name: "fallback_rate",
            value,
            threshold: g.fallback_rate,
            ok: value.map(|v| v <= g.fallback_rate),
            evidence: tried,
        });
    }
    if matches!(step, Step::Shadow | Step::Canary(_)) {
        let value = match (ev.new_p99, ev.legacy_p99) {
            (Some(new), Some(legacy)) if legacy > 0.0 => Some(new / legacy),
            _ => None,
        };
        // p99 is noisy: a breach counts only with the full evidence behind it.
        if let Some(v) = value.filter(|v| full && *v > g.p99) {
            fail("p99", format!("p99 {v:.2}x the monolith's (at most {:.2}x)", g.p99));
        }
        gates.push(Gate {
            name: "p99",
            value,
            threshold: g.p99,
            ok: value.map(|v| v <= g.p99),
            evidence: n,
        });
    }

    // A service that errors or falls back also answers differently: name the cause, not the symptom.
    let first = |name| failed.iter().position(|(gate, _)| *gate == name);
    if let Some(i) = BREACH_ORDER.iter().find_map(|name| first(*name)) {
        let (gate, why) = failed.swap_remove(i);
        return (Verdict::Fail { gate, why }, gates);
    }
    let verdict = if last {
        Verdict::Wait("the last step: nothing to promote to".into())
    } else if held < hold {
        Verdict::Wait(format!(
            "holding: {:?} of {hold:?}",
            Duration::from_millis(held.as_millis() as u64 / 100 * 100)
        ))
    } else if !full {
        Verdict::Wait(format!("evidence: {n} of {}", g.min_requests))
    } else if let Some(g) = gates.iter().find(|g| g.ok != Some(true)) {
        Verdict::Wait(match g.value {
            Some(v) => format!("{} is {v:.4} against {:.4}", g.name, g.threshold),
            None => format!("{} has no figures yet", g.name),
        })
    } else {
        Verdict::Promote
    };
    (verdict, gates)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gates() -> Gates {
        Gates {
            min_requests: 100,
            match_rate: 0.995,
            error_rate: 0.005,
            p99: 1.25,
            fallback_rate: 0.01,
        }
    }

    const HOLD: Duration = Duration::from_secs(10);

    fn shadow(compared: u64, matched: u64) -> Evidence {
        Evidence {
            compared,
            matched,
            new_p99: Some(0.010),
            legacy_p99: Some(0.010),
            ..Evidence::default()
        }
    }

    fn canary(new: u64, new_5xx: u64, fallbacks: u64) -> Evidence {
        Evidence {
            new_requests: new,
            new_5xx,
            legacy_requests: new * 3,
            legacy_5xx: 0,
            fallbacks,
            new_p99: Some(0.010),
            legacy_p99: Some(0.010),
            ..Evidence::default()
        }
    }

    #[test]
    fn verdicts() {
        type Case = (&'static str, Step, bool, Evidence, Duration, &'static str);
        let cases: Vec<Case> = vec![
            ("all good", Step::Shadow, false, shadow(100, 100), HOLD, "promote"),
            (
                "hold not over",
                Step::Shadow,
                false,
                shadow(100, 100),
                Duration::from_secs(3),
                "wait",
            ),
            ("too little evidence", Step::Shadow, false, shadow(50, 50), HOLD, "wait"),
            (
                "one unlucky mismatch early",
                Step::Shadow,
                false,
                shadow(10, 9),
                HOLD,
                "wait",
            ),
            (
                "clear mismatches",
                Step::Shadow,
                false,
                shadow(40, 30),
                HOLD,
                "fail match_rate",
            ),
            (
                "below the rate but not clearly",
                Step::Shadow,
                false,
                shadow(100, 99),
                HOLD,
                "wait",
            ),
            (
                "canary good",
                Step::Canary(5.0),
                false,
                canary(100, 0, 0),
                HOLD,
                "promote",
            ),
            (
                "canary failing",
                Step::Canary(25.0),
                false,
                canary(30, 30, 0),
                HOLD,
                "fail error_rate",
            ),
            (
                "canary falling back",
                Step::Canary(25.0),
                false,
                canary(20, 0, 20),
                HOLD,
                "fail fallback_rate",
            ),
            (
                "canary failing and so answering differently names the errors",
                Step::Canary(25.0),
                false,
                Evidence {
                    compared: 40,
                    matched: 10,
                    ..canary(30, 30, 0)
                },
                HOLD,
                "fail error_rate",
            ),
            (
                "canary falling back and mismatching names the fallbacks",
                Step::Canary(25.0),
                false,
                Evidence {
                    compared: 40,
                    matched: 10,
                    ..canary(20, 0, 20)
                },
                HOLD,
                "fail fallback_rate",
            ),
            (
                "migrated is the end",
                Step::Migrated,
                true,
                canary(500, 0, 0),
                HOLD,
                "wait",
            ),
            (
                "migrated failing still fails",
                Step::Migrated,
                true,
                canary(100, 50, 0),
                HOLD,
                "fail error_rate",
            ),
        ];
        for (name, step, last, ev, held, want) in cases {
            let (v, _) = judge(step, last, &gates(), &ev, held, HOLD);
            let got = match v {
                Verdict::Promote => "promote".to_string(),
                Verdict::Wait(_) => "wait".to_string(),
                Verdict::Fail { gate, .. } => format!("fail {gate}"),
            };
            assert_eq!(got, want, "{name}");
        }
    }

    #[test]
    fn a_slow_service_fails_on_p99_only_with_full_evidence() {
        let mut ev = canary(50, 0, 0);
        ev.new_p99 = Some(0.100);
        let (v, standing) = judge(Step::Canary(5.0), false, &gates(), &ev, HOLD, HOLD);
        assert!(matches!(v, Verdict::Wait(_)), "{v:?}");
        assert_eq!(standing.iter().find(|g| g.name == "p99").unwrap().ok, Some(false));
        ev.new_requests = 100;
        let (v, _) = judge(Step::Canary(5.0), false, &gates(), &ev, HOLD, HOLD);
        assert!(matches!(v, Verdict::Fail { gate: "p99", .. }), "{v:?}");
    }

    #[test]
    fn wilson_bounds() {
        let (lo, hi) = wilson(0, 0);
        assert_eq!((lo, hi), (0.0, 1.0));
        let (lo, hi) = wilson(50, 100);
        assert!(lo < 0.5 && hi > 0.5 && lo > 0.39 && hi < 0.61, "{lo} {hi}");
    }
}
