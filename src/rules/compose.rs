//! A route's `compose:`, compiled: the parts of one JSON answer, the upstream and path of each,
//! and which part waits for which. compose.rs (at the top) runs them.

use std::collections::BTreeMap;

use super::compile::Compiler;
use super::rewrite::{pieces, Part as Piece};
use super::{PathMatch, UpstreamId};
use crate::config::{ComposePartFile, RouteFile, Spanned};

pub const DEFAULT_MAX_FAN_OUT: usize = 50;
const MAX_FAN_OUT_LIMIT: u64 = 1000;

/// One step into a JSON value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    Key(String),
    /// `[*]`: every element of an array.
    Each,
}

/// `for_each: PART.key[*].key`.
#[derive(Debug)]
pub struct ForEach {
    /// The part whose answer holds the values.
    pub part: usize,
    /// Where in it: exactly one `Each`.
    pub steps: Vec<Step>,
    /// The parameter each value fills: the last key's name.
    pub var: String,
    /// As written, for errors and the admin API.
    pub text: String,
}

/// One part.
#[derive(Debug)]
pub struct ComposePart {
    pub name: String,
    pub upstream: UpstreamId,
    /// The path template, in pieces.
    pub path: Vec<Piece>,
    pub path_text: String,
    pub required: bool,
    pub for_each: Option<ForEach>,
}

/// The compiled `compose:`.
#[derive(Debug)]
pub struct Compose {
    /// In an order where every `for_each` part comes after the part it reads.
    pub parts: Vec<ComposePart>,
    pub max_fan_out: usize,
    /// The route's `match.path`, to read its parameters back from a matched path.
    pub matcher: matchit::Router<()>,
}

impl Compose {
    /// The route's parameters in `path` (a path the route matched).
    pub fn params(&self, path: &str) -> Vec<(String, String)> {
        self.matcher
            .at(path)
            .map(|m| m.params.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect())
            .unwrap_or_default()
    }
}

/// `PART.key[*].key` into the part's name and steps.
fn parse_for_each(text: &str) -> Result<(String, Vec<Step>), String> {
    let mut keys = text.split('.');
    let part = keys
        .next()
        .filter(|p| !p.is_empty())
        .ok_or("starts with the part's name")?;
    let mut steps = Vec::new();
    for k in keys {
        let (name, each) = match k.strip_suffix("[*]") {
            Some(n) => (n, true),
            None => (k, false),
        };
        if name.is_empty() || name.contains(['[', ']', '*']) {
            return Err(format!("bad key \"{k}\""));
        }
        steps.push(Step::Key(name.to_string()));
        if each {
            steps.push(Step::Each);
        }
    }
    if steps.iter().filter(|s| **s == Step::Each).count() != 1 {
        return Err("needs exactly one [*]".into());
    }
    if !matches!(steps.last(), Some(Step::Key(_))) {
        return Err("must end with a key after the [*] (like .sku)".into());
    }
    Ok((part.to_string(), steps))
}

impl Compiler<'_> {
    /// `compose:` and `max_fan_out:`.
    pub(super) fn compose(
        &mut self,
        f: &RouteFile,
        route: Option<&str>,
        path: Option<&PathMatch>,
        upstreams: &[&str],
        known: &str,
    ) -> Option<Compose> {
        let Some(c) = &f.compose else {
            if let Some(m) = &f.max_fan_out {
                self.err(&m.referenced, route, "max_fan_out is for routes with compose".into());
            }
            if f.mode.value == crate::config::ModeFile::Compose {
                self.err(
                    &f.mode.referenced,
                    route,
                    "mode compose needs `compose:` (its parts)".into(),
                );
            }
            return None;
        };
        let at = &c.referenced;
        if f.service.is_some() {
            self.err(
                at,
                route,
                "set service or compose, not both: compose is the new side".into(),
            );
            return None;
        }
        if c.value.is_empty() {
            self.err(at, route, "compose has no parts".into());
            return None;
        }
        let template = match path {
            Some(PathMatch::Literal(p) | PathMatch::Template(p)) => p.clone(),
            _ => {
                self.err(
                    at,
                    route,
                    "compose needs match.path (its parameters fill the parts' paths)".into(),
                );
                return None;
            }
        };
        let route_params: Vec<String> = pieces(&template)
            .unwrap_or_default()
            .into_iter()
            .filter_map(|p| match p {
                Piece::Param(n) => Some(n),
                Piece::Text(_) => None,
            })
            .collect();
        let max_fan_out = match &f.max_fan_out {
            None => DEFAULT_MAX_FAN_OUT,
            Some(m) if (1..=MAX_FAN_OUT_LIMIT).contains(&m.value) => m.value as usize,
            Some(m) => {
                self.err(
                    &m.referenced,
                    route,
                    format!("max_fan_out must be within 1..={MAX_FAN_OUT_LIMIT}, got {}", m.value),
                );
                return None;
            }
        };
        let names: Vec<&str> = c.value.keys().map(String::as_str).collect();
        let mut parts = Vec::new();
        let mut ok = true;
        for (name, p) in &c.value {
            match self.compose_part(name, p, route, &names, &route_params, upstreams, known) {
                Some(part) => parts.push(part),
                None => ok = false,
            }
        }
        if !ok {
            return None;
        }
        let parts = match order(parts, &c.value) {
            Ok(p) => p,
            Err(why) => {
                self.err(at, route, why);
                return None;
            }
        };
        let mut matcher = matchit::Router::new();
        matcher.insert(template.as_str(), ()).ok()?;
        Some(Compose {
            parts,
            max_fan_out,
            matcher,
        })
    }

    #[allow(clippy::too_many_arguments)]
    fn compose_part(
        &mut self,
        name: &str,
        p: &Spanned<ComposePartFile>,
        route: Option<&str>,
        names: &[&str],
        route_params: &[String],
        upstreams: &[&str],
        known: &str,
    ) -> Option<ComposePart> {
        let what = format!("compose.{name}");
        let upstream = match upstreams.iter().position(|u| *u == p.value.service.value) {
            Some(id) => id,
            None => {
                self.err(
                    &p.value.service.referenced,
                    route,
                    format!(
                        "{what}: unknown upstream \"{}\" (known: {known})",
                        p.value.service.value
                    ),
                );
                return None;
            }
        };
        let for_each = match &p.value.for_each {
            None => None,
            Some(fe) => match parse_for_each(fe.value.trim()) {
                Ok((part, steps)) => {
                    let Some(i) = names.iter().position(|n| *n == part) else {
                        self.err(
                            &fe.referenced,
                            route,
                            format!(
                                "{what}.for_each \"{}\": no part \"{part}\" (parts: {})",
                                fe.value,
                                names.join(", ")
                            ),
                        );
                        return None;
                    };
                    let Some(Step::Key(var)) = steps.last().cloned() else {
                        return None;
                    };
                    Some(ForEach {
                        part: i,
                        steps,
                        var,
                        text: fe.value.trim().to_string(),
                    })
                }
                Err(why) => {
                    self.err(&fe.referenced, route, format!("{what}.for_each \"{}\" {why}", fe.value));
                    return None;
                }
            },
        };
        let text = p.value.path.value.trim();
        let path = match pieces(text) {
            Ok(parts) if text.starts_with('/') => parts,
            Ok(_) => {
                self.err(
                    &p.value.path.referenced,
                    route,
                    format!("{what}.path must start with '/': \"{text}\""),
                );
                return None;
            }
            Err(why) => {
                self.err(
                    &p.value.path.referenced,
                    route,
                    format!("{what}.path \"{text}\": {why}"),
                );
                return None;
            }
        };
        for piece in &path {
            if let Piece::Param(n) = piece {
                let from_item = for_each.as_ref().is_some_and(|f| &f.var == n);
                if !from_item && !route_params.contains(n) {
                    let mut have: Vec<String> = route_params.iter().map(|p| format!("{{{p}}}")).collect();
                    if let Some(f) = &for_each {
                        have.push(format!("{{{}}} from for_each", f.var));
                    }
                    let have = if have.is_empty() {
                        "none".to_string()
                    } else {
                        have.join(", ")
                    };
                    self.err(
                        &p.value.path.referenced,
                        route,
                        format!("{what}.path uses {{{n}}}, which nothing fills (there are: {have})"),
                    );
                    return None;
                }
            }
        }
        Some(ComposePart {
            name: name.to_string(),
            upstream,
            path,
            path_text: text.to_string(),
            required: p.value.required.unwrap_or(false),
            for_each,
        })
    }
}

/// The parts in an order where each comes after the part it reads, with `for_each` indexes
/// remapped; `Err` when parts wait for each other in a loop, or a part reads itself.
fn order(
    parts: Vec<ComposePart>,
    file: &BTreeMap<String, Spanned<ComposePartFile>>,
) -> Result<Vec<ComposePart>, String> {
    let n = parts.len();
    let mut placed: Vec<Option<usize>> = vec![None; n];
    let mut sequence = Vec::with_capacity(n);
    while sequence.len() < n {
        let before = sequence.len();
        for (i, p) in parts.iter().enumerate() {
            if placed[i].is_some() {
                continue;
            }
            let ready = match &p.for_each {
                None => true,
                Some(f) => f.part != i && placed[f.part].is_some(),
            };
            if ready {
                placed[i] = Some(sequence.len());
                sequence.push(i);
            }
        }
        if sequence.len() == before {
            let stuck: Vec<&str> = file
                .keys()
                .enumerate()
                .filter(|(i, _)| placed[*i].is_none())
                .map(|(_, k)| k.as_str())
                .collect();
            return Err(format!("compose: parts {} wait for each other", stuck.join(", ")));
        }
    }
    let mut slots: Vec<Option<ComposePart>> = parts.into_iter().map(Some).collect();
    Ok(sequence
        .into_iter()
        .map(|i| {
            let mut p = slots[i].take().expect("each part once");
            if let Some(f) = &mut p.for_each {
                f.part = placed[f.part].expect("placed before");
            }
            p
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn for_each_paths() {
        assert_eq!(
            parse_for_each("order.items[*].sku"),
            Ok((
                "order".to_string(),
                vec![Step::Key("items".into()), Step::Each, Step::Key("sku".into())]
            ))
        );
        assert!(parse_for_each("order.items.sku")
            .unwrap_err()
            .contains("exactly one [*]"));
        assert!(parse_for_each("order.items[*]")
            .unwrap_err()
            .contains("must end with a key"));
        assert!(parse_for_each("order.a[*].b[*].c")
            .unwrap_err()
            .contains("exactly one [*]"));
        assert!(parse_for_each(".items[*].sku").is_err());
    }
}
