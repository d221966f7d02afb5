//! `strangler explain`: where a request would go under a rules file, and why.

use std::fmt::Write;

use http::{HeaderMap, HeaderName, HeaderValue, Method};

use crate::config::Mode;
use crate::rules::{canary_bucket, Miss, Request, RuleSet, Side, Sticky, CANARY_BUCKETS};

/// Explain one request. `headers` are `name: value` strings as given with `-H`.
pub fn explain(rules: &RuleSet, method: &str, target: &str, headers: &[String]) -> Result<String, String> {
    let method =
        Method::from_bytes(method.to_ascii_uppercase().as_bytes()).map_err(|_| format!("bad method \"{method}\""))?;
    let mut map = HeaderMap::new();
    for h in headers {
        let (name, value) = h
            .split_once(':')
            .ok_or_else(|| format!("bad header \"{h}\" (want 'name: value')"))?;
        let name = HeaderName::from_bytes(name.trim().as_bytes()).map_err(|_| format!("bad header name in \"{h}\""))?;
        let value = HeaderValue::from_str(value.trim()).map_err(|_| format!("bad header value in \"{h}\""))?;
        map.append(name, value);
    }
    let (raw_path, query) = match target.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (target, None),
    };
    let mut out = String::new();
    let path = match crate::path::normalize(raw_path) {
        Ok(p) => p,
        Err(e) => {
            let _ = writeln!(out, "path:        {raw_path}");
            let _ = writeln!(out, "result:      400 Bad Request ({e}); no upstream is contacted");
            return Ok(out);
        }
    };
    let _ = writeln!(out, "request:     {method} {target}");
    let _ = writeln!(
        out,
        "normalized:  {path}{}",
        query.map(|q| format!("?{q}")).unwrap_or_default()
    );
    let mut skipped = Vec::new();
    let req = Request {
        query,
        ..Request::new(&method, &path, &map)
    };
    let found = rules.lookup_traced(&req, |id, why| skipped.push((id, why)));
    for (id, why) in skipped {
        let r = &rules.routes[id];
        let reason = match why {
            Miss::Method => format!("method {method} not in [{}]", r.method_names.join(", ")),
            Miss::Host => match (&r.host, req.host()) {
                (Some(want), Some(got)) => format!("host {got} does not match {}", want.describe()),
                (Some(want), None) => format!("no host; the route wants {}", want.describe()),
                (None, _) => "host".into(),
            },
            Miss::Condition(i) => format!("{} does not hold", r.conditions[i].describe()),
        };
        let _ = writeln!(out, "skipped:     route \"{}\" (line {}): {reason}", r.name, r.line);
    }
    let Some(id) = found else {
        let _ = writeln!(out, "route:       (none): no rule matches");
        let _ = writeln!(out, "mode:        legacy");
        let _ = writeln!(out, "goes to:     {} (legacy)", rules.upstreams[rules.legacy].name);
        return Ok(out);
    };
    let r = &rules.routes[id];
    let why = r.describe_match();
    let _ = writeln!(out, "route:       {} (line {})", r.name, r.line);
    let _ = writeln!(out, "matched by:  {why}");
    let _ = writeln!(out, "mode:        {}", r.mode);
    let legacy = &rules.upstreams[rules.legacy].name;
    let service = r.service.map(|s| rules.upstreams[s].name.as_str()).unwrap_or("-");
    match r.mode {
        Mode::Legacy => {
            let _ = writeln!(out, "goes to:     {legacy} (legacy)");
        }
        Mode::Migrated => {
            let _ = writeln!(out, "goes to:     {service} (new)");
        }
        Mode::Shadow => {
            let _ = writeln!(out, "goes to:     {legacy} (legacy answers); a copy goes to {service}");
        }
        Mode::Canary => {
            let Some(c) = &r.canary else { return Ok(out) };
            let _ = writeln!(out, "canary:      {}% to {service}", c.percent);
            match c.key(&map) {
                Some(key) => {
                    let bucket = canary_bucket(key);
                    let side = c.side_of_bucket(bucket);
                    let dest = if side == Side::New { service } else { legacy.as_str() };
                    let _ = writeln!(
                        out,
                        "sticky key:  {} = {:?} -> bucket {bucket} of {CANARY_BUCKETS}",
                        sticky_name(c.sticky.as_ref()),
                        String::from_utf8_lossy(key)
                    );
                    let _ = writeln!(out, "goes to:     {dest} ({})", side.as_str());
                }
                None => {
                    let _ = writeln!(
                        out,
                        "goes to:     {service} for {}% of such requests, else {legacy} (random: no sticky key{})",
                        c.percent,
                        c.sticky
                            .as_ref()
                            .map(|s| format!(" {} in the request", sticky_name(Some(s))))
                            .unwrap_or_default()
                    );
                }
            }
        }
    }
    if let Some(rw) = &r.rewrite {
        let new_path = rw
            .apply(&path, query)
            .unwrap_or_else(|| "(does not fit; the client's path)".into());
        let _ = writeln!(
            out,
            "paths:       {legacy} gets {path}{}",
            query.map(|q| format!("?{q}")).unwrap_or_default()
        );
        let _ = writeln!(
            out,
            "             {service} gets {new_path} (rewrite: {})",
            rw.describe()
        );
    }
    if let Some(sh) = &r.shadow {
        let copied = sh.copies(&method);
        let _ = writeln!(
            out,
            "shadow:      {} of {} requests copied to {service}{}",
            if sh.sample >= 1.0 {
                "all".to_string()
            } else {
                format!("{}%", sh.sample * 100.0)
            },
            sh.method_names.join("/"),
            if copied { "" } else { " (not this method)" }
        );
        let ignore = if sh.ignore_text.is_empty() {
            "nothing".to_string()
        } else {
            sh.ignore_text.join(", ")
        };
        let _ = writeln!(
            out,
            "  ignores:   {ignore}; compares status, body and {}",
            headers_list(&sh.compare.compare_headers)
        );
        if !sh.forward_credentials {
            let _ = writeln!(
                out,
                "  copies:    without authorization and cookie (forward_credentials: false)"
            );
        }
        if let Some(p) = sh.noise_sample {
            let _ = writeln!(
                out,
                "  noise:     {}% of copies also ask {legacy} twice; learned paths: GET /api/routes on the admin port",
                p * 100.0
            );
        }
    }
    if r.service.is_some() && r.mode != Mode::Shadow {
        let _ = writeln!(
            out,
            "fallback:    {}",
            if r.fallback {
                format!("to {legacy} when {service} fails (timeout {:?})", r.timeout)
            } else {
                "off".into()
            }
        );
    }
    if let Some(ro) = &r.rollout {
        let steps: Vec<String> = ro.steps.iter().map(|s| s.label()).collect();
        let at = ro.current(r).map_or("not one of its steps".to_string(), |i| {
            format!("at {} (step {} of {})", ro.steps[i].label(), i + 1, ro.steps.len())
        });
        let g = &ro.gates;
        let _ = writeln!(
            out,
            "rollout:     [{}], {at}{}; hold {:?}\n             gates: {} requests, match rate >= {}%, 5xx rate <= the monolith's +{}%, p99 <= {}x, fallbacks <= {}%; on failure {}",
            steps.join(", "),
            if ro.paused { ", paused" } else { "" },
            ro.hold,
            g.min_requests,
            g.match_rate * 100.0,
            g.error_rate * 100.0,
            g.p99,
            g.fallback_rate * 100.0,
            match ro.on_failure {
                crate::rules::OnFailure::Rollback => "roll back to the first step and pause",
                crate::rules::OnFailure::Pause => "pause",
            }
        );
    }
    Ok(out)
}

fn headers_list(h: &[HeaderName]) -> String {
    if h.is_empty() {
        return "no headers".into();
    }
    h.iter().map(|n| n.as_str()).collect::<Vec<_>>().join(", ")
}

fn sticky_name(s: Option<&Sticky>) -> String {
    match s {
        Some(Sticky::Header(h)) => format!("header:{h}"),
        Some(Sticky::Cookie(c)) => format!("cookie:{c}"),
        None => "none".into(),
    }
}
