//! The compiler's rollout half: `autopilot:` and each route's `rollout:` (steps, hold, gates),
//! every mistake with `file:line:col`.

use std::time::Duration;

use crate::config::Spanned;

use super::compile::Compiler;
use super::*;
use crate::config::{self, RulesFile, StepFile};

/// Least time at each step when `hold` is not given.
pub const DEFAULT_HOLD: Duration = Duration::from_secs(600);

impl Compiler<'_> {
    pub(super) fn autopilot(&mut self, raw: &RulesFile) -> Autopilot {
        let d = Autopilot::default();
        let Some(f) = raw.autopilot.as_ref().map(|a| &a.value) else {
            return d;
        };
        let external = match f.controller.as_ref() {
            None => false,
            Some(c) => match c.value.trim() {
                "in_process" => false,
                "external" => true,
                other => {
                    self.err(
                        &c.referenced,
                        None,
                        format!("autopilot.controller: \"{other}\" (allowed: in_process, external)"),
                    );
                    false
                }
            },
        };
        Autopilot {
            enabled: f.enabled.unwrap_or(true),
            external,
            interval: self.duration(&f.interval, "autopilot.interval", d.interval),
        }
    }

    pub(super) fn rollout(&mut self, f: &config::RouteFile, n: Option<&str>) -> Option<Rollout> {
        let r = &f.rollout.as_ref()?.value;
        let before = self.errors.len();
        if f.service.is_none() && f.compose.is_none() {
            self.err(
                &f.name.referenced,
                n,
                "`rollout` needs `service:` (the upstream the route moves to) or `compose:`".into(),
            );
        }
        let mut steps: Vec<Step> = Vec::new();
        for s in &r.steps.value {
            let step = match &s.value {
                StepFile::Percent(p) if *p > 0.0 && *p < 100.0 => Step::Canary(*p),
                StepFile::Percent(p) => {
                    self.err(
                        &s.referenced,
                        n,
                        format!("rollout.steps: a canary percent is within 0..100 (exclusive), got {p}; use shadow or migrated for the ends"),
                    );
                    continue;
                }
                StepFile::Name(name) => match name.trim() {
                    "legacy" => Step::Legacy,
                    "shadow" => Step::Shadow,
                    "migrated" => Step::Migrated,
                    other => {
                        self.err(
                            &s.referenced,
                            n,
                            format!("rollout.steps: \"{other}\" (allowed: legacy, shadow, a canary percent such as 5, migrated)"),
                        );
                        continue;
                    }
                },
            };
            if let Some(last) = steps.last() {
                if step.order() <= last.order() {
                    self.err(
                        &s.referenced,
                        n,
                        format!(
                            "rollout.steps: {} after {}; steps go forward (legacy, shadow, rising percents, migrated)",
                            step.label(),
                            last.label()
                        ),
                    );
                    continue;
                }
            }
            steps.push(step);
        }
        if steps.len() < 2 && self.errors.len() == before {
            self.err(
                &r.steps.referenced,
                n,
                "rollout.steps: give at least two steps, e.g. [shadow, 5, 50, migrated]".into(),
            );
        }
        let hold = self.duration_in(&r.hold, n, "rollout.hold", DEFAULT_HOLD);
        let gates = self.gates(&r.gates, n);
        let on_failure = match r.on_failure.as_ref() {
            None => OnFailure::Rollback,
            Some(o) => match o.value.trim() {
                "rollback" => OnFailure::Rollback,
                "pause" => OnFailure::Pause,
                other => {
                    self.err(
                        &o.referenced,
                        n,
                        format!("rollout.on_failure: \"{other}\" (allowed: rollback, pause)"),
                    );
                    OnFailure::Rollback
                }
            },
        };
        (self.errors.len() == before).then_some(Rollout {
            steps,
            hold,
            gates,
            on_failure,
            paused: r.paused.as_ref().is_some_and(|p| p.value),
        })
    }

    fn gates(&mut self, g: &config::GatesFile, n: Option<&str>) -> Gates {
        let d = Gates::default();
        let min_requests = match &g.min_requests {
            Some(m) if m.value == 0 => {
                self.err(&m.referenced, n, "rollout.gates.min_requests must be at least 1".into());
                d.min_requests
            }
            Some(m) => m.value,
            None => d.min_requests,
        };
        Gates {
            min_requests,
            match_rate: self.share(&g.match_rate, n, "match_rate", Sign::None, d.match_rate),
            error_rate: self.share(&g.error_rate, n, "error_rate", Sign::Plus, d.error_rate),
            p99: self.factor(&g.p99, n, d.p99),
            fallback_rate: self.share(&g.fallback_rate, n, "fallback_rate", Sign::None, d.fallback_rate),
        }
    }

    /// `99.5%` (or `+0.5%` where a difference is meant) as a share, 0..=1.
    fn share(&mut self, v: &Option<Spanned<String>>, n: Option<&str>, what: &str, sign: Sign, default: f64) -> f64 {
        let Some(v) = v else { return default };
        let text = v.value.trim();
        let body = match sign {
            Sign::Plus => text.strip_prefix('+').unwrap_or(text),
            Sign::None => text,
        };
        match body.strip_suffix('%').and_then(|p| p.trim().parse::<f64>().ok()) {
            Some(p) if (0.0..=100.0).contains(&p) => p / 100.0,
            _ => {
                let example = if sign == Sign::Plus { "+0.5%" } else { "99.5%" };
                self.err(
                    &v.referenced,
                    n,
                    format!("rollout.gates.{what}: \"{text}\" is not a percentage (e.g. {example})"),
                );
                default
            }
        }
    }

    /// `1.25x` as a factor, at least 1.
    fn factor(&mut self, v: &Option<Spanned<String>>, n: Option<&str>, default: f64) -> f64 {
        let Some(v) = v else { return default };
        let text = v.value.trim();
        match text.strip_suffix('x').and_then(|f| f.trim().parse::<f64>().ok()) {
            Some(f) if f >= 1.0 && f.is_finite() => f,
            _ => {
                self.err(
                    &v.referenced,
                    n,
                    format!("rollout.gates.p99: \"{text}\" is not a factor of 1 or more (e.g. 1.25x)"),
                );
                default
            }
        }
    }
}

#[derive(PartialEq, Eq, Clone, Copy)]
enum Sign {
    None,
    Plus,
}
