//! `discovery.openapi`: the monolith's OpenAPI document, read when the rules are loaded. Its
//! operations (method and path template) join the migration map, so that an operation nobody
//! calls shows as `unseen`, and its templates name the endpoints traffic reaches.

use std::time::Duration;

use serde_json::Value;

use super::compile::{relative_to, Compiler};
use crate::config::Spanned;

/// The methods an OpenAPI path item may hold.
const METHODS: [&str; 8] = ["get", "put", "post", "delete", "options", "head", "patch", "trace"];
/// A document at a URL must arrive within this.
const FETCH_TIMEOUT: Duration = Duration::from_secs(5);

/// Every operation of an OpenAPI 3 (or Swagger 2) document: upper-case method and path template,
/// sorted. Paths that are not templates this proxy can use (no leading '/') are left out.
pub fn operations(doc: &Value) -> Vec<(String, String)> {
    let mut ops: Vec<(String, String)> = doc
        .get("paths")
        .and_then(Value::as_object)
        .into_iter()
        .flatten()
        .filter(|(path, _)| path.starts_with('/'))
        .flat_map(|(path, item)| {
            METHODS
                .iter()
                .filter(|m| item.get(**m).is_some())
                .map(|m| (m.to_ascii_uppercase(), path.clone()))
                .collect::<Vec<_>>()
        })
        .collect();
    ops.sort();
    ops
}

/// A document from its text: JSON, or YAML.
fn parse(text: &str) -> Result<Value, String> {
    if text.trim_start().starts_with('{') {
        serde_json::from_str(text).map_err(|e| format!("not JSON: {e}"))
    } else {
        serde_saphyr::from_str(text).map_err(|e| format!("not YAML: {e}"))
    }
}

/// GET `url`, blocking (the compiler is sync and may run anywhere).
fn fetch(url: &str) -> Result<String, String> {
    crate::blocking::run(|| async {
        let client = reqwest::Client::builder()
            .timeout(FETCH_TIMEOUT)
            .build()
            .map_err(|e| e.to_string())?;
        let r = client.get(url).send().await.map_err(|e| e.to_string())?;
        if !r.status().is_success() {
            return Err(format!("status {}", r.status()));
        }
        r.text().await.map_err(|e| e.to_string())
    })
}

impl Compiler<'_> {
    /// The operations of `discovery.openapi`. A file that can't be read or parsed is a mistake
    /// in the rules; a URL that can't be reached now only warns (the map does without it).
    pub(super) fn openapi(&mut self, at: &Spanned<String>) -> Vec<(String, String)> {
        let v = at.value.trim();
        let text = if v.starts_with("http://") || v.starts_with("https://") {
            match fetch(v) {
                Ok(t) => t,
                Err(e) => {
                    tracing::warn!(
                        "discovery.openapi: can't fetch {v} ({e}); the map goes without it until the next reload"
                    );
                    return Vec::new();
                }
            }
        } else {
            let path = relative_to(self.file, v);
            match std::fs::read_to_string(&path) {
                Ok(t) => t,
                Err(e) => {
                    self.err(
                        &at.referenced,
                        None,
                        format!("discovery.openapi: can't read \"{}\": {e}", path.display()),
                    );
                    return Vec::new();
                }
            }
        };
        match parse(&text) {
            Ok(doc) if doc.get("paths").is_some_and(Value::is_object) => operations(&doc),
            Ok(_) => {
                self.err(
                    &at.referenced,
                    None,
                    format!("discovery.openapi: \"{v}\" has no `paths`; is it an OpenAPI document?"),
                );
                Vec::new()
            }
            Err(e) => {
                self.err(&at.referenced, None, format!("discovery.openapi: \"{v}\" is {e}"));
                Vec::new()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn operations_of_a_document() {
        let doc = parse(
            "openapi: 3.0.3\npaths:\n  /a/{id}:\n    get: {}\n    delete: {}\n    parameters: []\n  /b:\n    post: {}\n  x: { get: {} }\n",
        )
        .unwrap();
        assert_eq!(
            operations(&doc),
            [
                ("DELETE".to_string(), "/a/{id}".to_string()),
                ("GET".into(), "/a/{id}".into()),
                ("POST".into(), "/b".into())
            ]
        );
        let json = parse(r#"{"paths": {"/c": {"get": {}}}}"#).unwrap();
        assert_eq!(operations(&json), [("GET".to_string(), "/c".to_string())]);
    }
}
