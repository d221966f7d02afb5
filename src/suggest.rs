//! `strangler suggest`: the fewest rules.yaml routes that put one capability in `shadow` on a
//! service, from the endpoint map (prefixes where a whole subtree is the capability's, templates
//! otherwise). Pure: the map and the rules in, YAML out.

use std::collections::BTreeMap;

use crate::rules::{PathMatch, RuleSet};

/// One endpoint of the map, as `GET /api/endpoints` lists it.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    pub template: String,
    pub capability: String,
    pub state: String,
}

/// What `suggest` found to do.
#[derive(Debug, Default)]
pub struct Suggestion {
    /// New routes, as YAML list items ready to paste under `routes:`.
    pub yaml: String,
    /// Routes the suggestion adds.
    pub routes: usize,
    /// Existing routes with the same match that should be edited instead (name, what to set).
    pub edits: Vec<String>,
    /// Endpoints left out because they already move (shadow, canary or migrated).
    pub moving: usize,
}

/// The literal segments of a template up to its first parameter: `/api/orders/{id}` -> `/api/orders`.
fn literal_prefix(template: &str) -> &str {
    match template.find('{') {
        Some(i) => template[..i].trim_end_matches('/'),
        None => template.trim_end_matches('/'),
    }
}

/// Is `template` in the subtree of `prefix` (whole segments)?
fn under(template: &str, prefix: &str) -> bool {
    prefix == "/" || template == prefix || template.starts_with(&format!("{prefix}/"))
}

/// A template with its parameters named apart (`/a/{id}/b/{id}` -> `/a/{id}/b/{id2}`): a route
/// template needs distinct names.
fn distinct_params(template: &str) -> String {
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    let mut out = String::with_capacity(template.len());
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        let Some(close) = rest[open..].find('}') else { break };
        let name = &rest[open + 1..open + close];
        out.push_str(&rest[..open]);
        let n = seen.entry(name.to_string()).or_default();
        *n += 1;
        if *n == 1 {
            out.push_str(&format!("{{{name}}}"));
        } else {
            out.push_str(&format!("{{{name}{n}}}"));
        }
        rest = &rest[open + close + 1..];
    }
    out.push_str(rest);
    out
}

/// A route name from a capability and a path: `orders` + `/api/orders/{id}` -> `orders-api-orders-id`.
fn route_name(capability: &str, path: &str, taken: &mut Vec<String>) -> String {
    let slug: String = path
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .collect::<String>()
        .split('-')
        .filter(|s| !s.is_empty())
        .collect::<Vec<_>>()
        .join("-");
    let base = format!("{capability}-{}", if slug.is_empty() { "root" } else { &slug });
    let mut name = base.clone();
    let mut n = 2;
    while taken.contains(&name) {
        name = format!("{base}-{n}");
        n += 1;
    }
    taken.push(name.clone());
    name
}

/// The routes that put `capability` in shadow on `service`. `all` is the whole map (other
/// capabilities decide which prefixes are the capability's alone); `rules` the file in force.
pub fn suggest(all: &[Seen], rules: &RuleSet, capability: &str, service: &str) -> Suggestion {
    let mut out = Suggestion::default();
    let mine: Vec<&Seen> = all.iter().filter(|e| e.capability == capability).collect();
    let (moving, todo): (Vec<&Seen>, Vec<&Seen>) = mine.into_iter().partition(|e| e.state != "legacy");
    out.moving = moving.len();
    // For each endpoint, the shortest prefix of its literal part that holds nothing of another
    // capability; none when even its whole literal part is shared. Never shorter than the segment
    // that names the capability (`/api/payments`, not `/api`): the map may not have seen the
    // neighbours yet.
    let owned = |t: &str| -> Option<String> {
        let lit = literal_prefix(t);
        let segs: Vec<&str> = lit.split('/').filter(|s| !s.is_empty()).collect();
        let shortest = segs
            .iter()
            .position(|s| *s == capability)
            .map_or(segs.len(), |k| k + 1)
            .max(1);
        (shortest..=segs.len())
            .map(|k| format!("/{}", segs[..k].join("/")))
            .find(|p| all.iter().all(|e| e.capability == capability || !under(&e.template, p)))
    };
    // Prefix -> methods; template -> methods, in a stable order.
    let mut prefixes: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut templates: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for e in &todo {
        let (table, key) = match owned(&e.template) {
            Some(p) => (&mut prefixes, p),
            None => (&mut templates, distinct_params(&e.template)),
        };
        let methods = table.entry(key).or_default();
        if !methods.contains(&e.method) {
            methods.push(e.method.clone());
        }
    }
    // A shorter chosen prefix covers a longer one.
    let keys: Vec<String> = prefixes.keys().cloned().collect();
    for k in &keys {
        if let Some(outer) = keys.iter().find(|o| *o != k && under(k, o)) {
            let methods = prefixes.remove(k).unwrap_or_default();
            let into = prefixes.entry(outer.clone()).or_default();
            for m in methods {
                if !into.contains(&m) {
                    into.push(m);
                }
            }
        }
    }
    let mut taken: Vec<String> = rules.routes.iter().map(|r| r.name.clone()).collect();
    let existing = |m: &PathMatch| rules.routes.iter().find(|r| r.path.key() == m.key());
    let mut yaml = String::new();
    let mut emit = |kind: &str, path: &str, methods: &mut Vec<String>, m: PathMatch| {
        if let Some(r) = existing(&m) {
            out.edits.push(format!(
                "route \"{}\" (line {}) already matches {kind} {path}: set `mode: shadow` and `service: {service}` there",
                r.name, r.line
            ));
            return;
        }
        methods.sort_by_key(|m| {
            ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]
                .iter()
                .position(|k| k == m)
        });
        let name = route_name(capability, path, &mut taken);
        yaml.push_str(&format!(
            "  - name: {name}\n    match: {{ {kind}: \"{path}\", methods: [{}] }}\n    mode: shadow\n    service: {service}\n    capability: {capability}\n",
            methods.join(", ")
        ));
        out.routes += 1;
    };
    for (p, mut methods) in prefixes {
        emit("prefix", &p.clone(), &mut methods, PathMatch::Prefix(p));
    }
    for (t, mut methods) in templates {
        let m = if t.contains('{') {
            PathMatch::Template(t.clone())
        } else {
            PathMatch::Literal(t.clone())
        };
        emit("path", &t, &mut methods, m);
    }
    out.yaml = yaml;
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seen(method: &str, template: &str, capability: &str, state: &str) -> Seen {
        Seen {
            method: method.into(),
            template: template.into(),
            capability: capability.into(),
            state: state.into(),
        }
    }

    fn rules(routes: &str) -> RuleSet {
        let text = format!("legacy: mono\nupstreams:\n  mono: {{ url: \"http://127.0.0.1:1\" }}\n  pay: {{ url: \"http://127.0.0.1:2\" }}\nroutes:\n{routes}");
        let file = std::path::Path::new("rules.yaml");
        crate::rules::compile(file, &crate::config::parse(file, &text).unwrap()).unwrap()
    }

    #[test]
    fn a_whole_subtree_becomes_one_prefix() {
        let map = [
            seen("POST", "/api/payments", "payments", "legacy"),
            seen("GET", "/api/payments/order/{id}", "payments", "legacy"),
            seen("GET", "/api/orders/{id}", "orders", "shadow"),
        ];
        let s = suggest(&map, &rules(""), "payments", "pay");
        assert_eq!(s.routes, 1, "{}", s.yaml);
        assert!(
            s.yaml.contains("prefix: \"/api/payments\", methods: [GET, POST]"),
            "{}",
            s.yaml
        );
        // Pasted into the file, it passes the compiler.
        let pasted = rules(&s.yaml);
        assert_eq!(pasted.routes.len(), 1);
    }

    #[test]
    fn a_shared_subtree_gets_templates() {
        let map = [
            seen("GET", "/api/users/{id}", "users", "legacy"),
            seen("GET", "/api/users/{id}/orders", "orders", "shadow"),
            seen("GET", "/{param}/{param}", "users", "legacy"),
        ];
        let s = suggest(&map, &rules(""), "users", "pay");
        assert_eq!(s.routes, 2, "{}", s.yaml);
        assert!(
            s.yaml.contains("path: \"/api/users/{id}\", methods: [GET]"),
            "{}",
            s.yaml
        );
        assert!(s.yaml.contains("path: \"/{param}/{param2}\""), "{}", s.yaml);
        assert_eq!(rules(&s.yaml).routes.len(), 2);
    }

    #[test]
    fn an_existing_route_with_the_same_match_is_edited_not_doubled() {
        let map = [seen("GET", "/api/payments/{id}", "payments", "legacy")];
        let s = suggest(
            &map,
            &rules("  - { name: payments, match: { prefix: /api/payments }, mode: legacy }\n"),
            "payments",
            "pay",
        );
        assert_eq!(s.routes, 0);
        assert_eq!(s.edits.len(), 1, "{:?}", s.edits);
        assert!(s.edits[0].contains("route \"payments\""), "{:?}", s.edits);
    }

    #[test]
    fn endpoints_already_moving_are_left_alone() {
        let map = [seen("GET", "/api/inventory/{id}", "inventory", "migrated")];
        let s = suggest(&map, &rules(""), "inventory", "pay");
        assert_eq!((s.routes, s.moving), (0, 1));
    }
}
