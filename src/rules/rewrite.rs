//! A route's `rewrite:`: the path its new side gets instead of the client's, compiled once at
//! load and applied only when a request goes to the route's service.

use crate::config::Spanned;

use super::compile::Compiler;
use super::PathMatch;
use crate::config::RewriteFile;

/// How the new side's path is made from the client's (normalized) path.
#[derive(Debug)]
pub enum Rewrite {
    /// The route's `match.prefix` replaced: `from` becomes `to`, the rest kept.
    Prefix { from: String, to: String },
    /// Built from `match.path`'s parameters.
    Template {
        /// The route's own template, to read the parameters back from a matched path.
        matcher: matchit::Router<()>,
        parts: Vec<Part>,
        /// The template as written, for `explain` and the admin API.
        text: String,
    },
}

/// One piece of a rewrite template.
#[derive(Debug, PartialEq, Eq)]
pub enum Part {
    Text(String),
    Param(String),
}

impl Rewrite {
    /// The new side's path and query for `path` (a path this route matched) and `query`.
    /// `None` when the path doesn't fit (it always does for a path the route matched).
    pub fn apply(&self, path: &str, query: Option<&str>) -> Option<String> {
        let mut out = String::with_capacity(path.len() + 32);
        match self {
            Rewrite::Prefix { from, to } => {
                let rest = if from == "/" {
                    path
                } else {
                    path.strip_prefix(from.as_str())?
                };
                if to == "/" && rest.starts_with('/') {
                    out.push_str(rest);
                } else {
                    out.push_str(to);
                    if !rest.is_empty() && !rest.starts_with('/') && !to.ends_with('/') {
                        out.push('/');
                    }
                    out.push_str(rest);
                }
            }
            Rewrite::Template { matcher, parts, .. } => {
                let matched = matcher.at(path).ok()?;
                for part in parts {
                    match part {
                        Part::Text(t) => out.push_str(t),
                        Part::Param(name) => out.push_str(matched.params.get(name.as_str())?),
                    }
                }
            }
        }
        if let Some(q) = query {
            out.push('?');
            out.push_str(q);
        }
        Some(out)
    }

    /// The rewrite as written, e.g. `prefix /v1/orders` or `path /orders/{id}/lines`.
    pub fn describe(&self) -> String {
        match self {
            Rewrite::Prefix { to, .. } => format!("prefix {to}"),
            Rewrite::Template { text, .. } => format!("path {text}"),
        }
    }
}

/// `{name}` pieces of a template and the text between them; `Err` names what's wrong.
pub(super) fn pieces(template: &str) -> Result<Vec<Part>, String> {
    let mut out = Vec::new();
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        if open > 0 {
            out.push(Part::Text(rest[..open].to_string()));
        }
        let close = rest[open..].find('}').ok_or("an unclosed '{'")? + open;
        let name = &rest[open + 1..close];
        if name.is_empty() || name.starts_with('*') || !name.chars().all(|c| c.is_alphanumeric() || c == '_') {
            return Err(format!("bad parameter {{{name}}}"));
        }
        out.push(Part::Param(name.to_string()));
        rest = &rest[close + 1..];
    }
    if rest.contains('}') {
        return Err("a '}' without its '{'".into());
    }
    if !rest.is_empty() {
        out.push(Part::Text(rest.to_string()));
    }
    Ok(out)
}

impl Compiler<'_> {
    /// A route's `rewrite:`; errors point at the rewrite's own line.
    pub(super) fn rewrite(
        &mut self,
        rw: Option<&Spanned<RewriteFile>>,
        route: Option<&str>,
        path: Option<&PathMatch>,
        has_service: bool,
    ) -> Option<Rewrite> {
        let rw = rw?;
        let at = &rw.referenced;
        if !has_service {
            self.err(
                at,
                route,
                "rewrite changes the new side's path; give the route a service".into(),
            );
            return None;
        }
        let path = path?;
        match (&rw.value.prefix, &rw.value.path) {
            (Some(to), None) => {
                let PathMatch::Prefix(from) = path else {
                    self.err(&to.referenced, route, "rewrite.prefix needs match.prefix".into());
                    return None;
                };
                let to = to.value.trim();
                if !to.starts_with('/') || to.contains(['{', '}', '?', '#']) || to.chars().any(char::is_whitespace) {
                    self.err(
                        &rw.value.prefix.as_ref()?.referenced,
                        route,
                        format!("rewrite.prefix must be a plain path starting with '/': \"{to}\""),
                    );
                    return None;
                }
                let to = to.trim_end_matches('/');
                Some(Rewrite::Prefix {
                    from: from.clone(),
                    to: if to.is_empty() { "/".into() } else { to.into() },
                })
            }
            (None, Some(t)) => {
                let text = t.value.trim();
                let matched = match path {
                    PathMatch::Template(m) | PathMatch::Literal(m) => m,
                    PathMatch::Prefix(_) => {
                        self.err(
                            &t.referenced,
                            route,
                            "rewrite.path needs match.path; with match.prefix use rewrite.prefix".into(),
                        );
                        return None;
                    }
                };
                if !text.starts_with('/') || text.contains(['?', '#']) || text.chars().any(char::is_whitespace) {
                    self.err(
                        &t.referenced,
                        route,
                        format!("rewrite.path must be a path starting with '/': \"{text}\""),
                    );
                    return None;
                }
                let parts = match pieces(text) {
                    Ok(p) => p,
                    Err(why) => {
                        self.err(&t.referenced, route, format!("rewrite.path \"{text}\": {why}"));
                        return None;
                    }
                };
                let known = match pieces(matched) {
                    Ok(p) => p,
                    Err(_) => return None, // match.path reports its own error
                };
                let known: Vec<&str> = known
                    .iter()
                    .filter_map(|p| match p {
                        Part::Param(n) => Some(n.as_str()),
                        Part::Text(_) => None,
                    })
                    .collect();
                for p in &parts {
                    if let Part::Param(name) = p {
                        if !known.contains(&name.as_str()) {
                            let have = if known.is_empty() {
                                "match.path has none".to_string()
                            } else {
                                format!(
                                    "match.path has {}",
                                    known.iter().map(|k| format!("{{{k}}}")).collect::<Vec<_>>().join(", ")
                                )
                            };
                            self.err(
                                &t.referenced,
                                route,
                                format!("rewrite.path uses {{{name}}}, which match.path doesn't capture ({have})"),
                            );
                            return None;
                        }
                    }
                }
                let mut matcher = matchit::Router::new();
                matcher.insert(matched.as_str(), ()).ok()?;
                Some(Rewrite::Template {
                    matcher,
                    parts,
                    text: text.to_string(),
                })
            }
            _ => {
                self.err(at, route, "rewrite: set exactly one of prefix or path".into());
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn template(matched: &str, to: &str) -> Rewrite {
        let mut matcher = matchit::Router::new();
        matcher.insert(matched, ()).unwrap();
        Rewrite::Template {
            matcher,
            parts: pieces(to).unwrap(),
            text: to.into(),
        }
    }

    fn prefix(from: &str, to: &str) -> Rewrite {
        Rewrite::Prefix {
            from: from.into(),
            to: to.into(),
        }
    }

    #[test]
    fn paths_the_new_side_gets() {
        let cases: Vec<(Rewrite, &str, Option<&str>, Option<&str>)> = vec![
            (
                prefix("/api/orders", "/v1/orders"),
                "/api/orders/7",
                None,
                Some("/v1/orders/7"),
            ),
            (
                prefix("/api/orders", "/v1/orders"),
                "/api/orders",
                Some("a=1"),
                Some("/v1/orders?a=1"),
            ),
            (
                prefix("/api/orders", "/v1/orders"),
                "/api/orders/",
                None,
                Some("/v1/orders/"),
            ),
            (prefix("/api/orders", "/"), "/api/orders/7", None, Some("/7")),
            (prefix("/api/orders", "/"), "/api/orders", None, Some("/")),
            (prefix("/", "/legacy"), "/x/y", None, Some("/legacy/x/y")),
            (prefix("/api/orders", "/v1"), "/other", None, None),
            (
                template("/api/orders/{id}/items", "/orders/{id}/lines"),
                "/api/orders/42/items",
                Some("page=2"),
                Some("/orders/42/lines?page=2"),
            ),
            (template("/a/{x}/{y}", "/b/{y}/{x}"), "/a/1/2", None, Some("/b/2/1")),
            (template("/a/{x}", "/b/{x}"), "/a/1/2", None, None),
        ];
        for (rw, path, query, want) in cases {
            assert_eq!(rw.apply(path, query).as_deref(), want, "{rw:?} on {path}");
        }
    }

    #[test]
    fn template_pieces_are_parsed() {
        assert_eq!(
            pieces("/orders/{id}/lines").unwrap(),
            vec![
                Part::Text("/orders/".into()),
                Part::Param("id".into()),
                Part::Text("/lines".into())
            ]
        );
        assert!(pieces("/orders/{id").is_err());
        assert!(pieces("/orders/id}").is_err());
        assert!(pieces("/orders/{*rest}").is_err());
        assert!(pieces("/orders/{}").is_err());
    }
}
