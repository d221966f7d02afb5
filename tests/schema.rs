//! The JSON Schema of rules.yaml: `strangler schema` matches the committed rules.schema.json,
//! every key has a description, and every rules file in the repository names the schema in its
//! first line, passes an independent validator (check-jsonschema) and passes `strangler check`.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::proxy::strangler;
use common::tools::require;

const HEADER: &str = "# yaml-language-server: $schema=";

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// Every rules file in the repository: a YAML file with `legacy:` and `upstreams:` at the top level.
fn rules_files() -> Vec<PathBuf> {
    let out = Command::new("git")
        .args([
            "ls-files",
            "--cached",
            "--others",
            "--exclude-standard",
            "*.yaml",
            "*.yml",
        ])
        .current_dir(root())
        .output()
        .expect("git ls-files");
    let files: Vec<PathBuf> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|f| !f.starts_with("vendor/"))
        .map(|f| root().join(f))
        .filter(|f| {
            let text = std::fs::read_to_string(f).unwrap_or_default();
            text.lines().any(|l| l.starts_with("legacy:")) && text.lines().any(|l| l.starts_with("upstreams:"))
        })
        .collect();
    assert!(files.len() >= 3, "rules files found: {files:?}");
    files
}

#[test]
fn the_committed_schema_matches_the_types() {
    let out = strangler().arg("schema").output().unwrap();
    assert!(out.status.success());
    let generated = String::from_utf8(out.stdout).unwrap();
    let committed = std::fs::read_to_string(root().join("rules.schema.json")).unwrap();
    assert!(
        generated.trim_end() == committed.trim_end(),
        "rules.schema.json is out of date with src/config.rs: run `cargo run -q -- schema > rules.schema.json`"
    );
}

#[test]
fn every_key_has_a_description() {
    let schema: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(root().join("rules.schema.json")).unwrap()).unwrap();
    fn walk(node: &serde_json::Value, at: &str, missing: &mut Vec<String>, keys: &mut usize) {
        match node {
            serde_json::Value::Object(o) => {
                for (k, v) in o.get("properties").and_then(|p| p.as_object()).into_iter().flatten() {
                    *keys += 1;
                    if v.get("description").and_then(|d| d.as_str()).is_none_or(str::is_empty) {
                        missing.push(format!("{at}.{k}"));
                    }
                }
                for (k, v) in o {
                    walk(v, &format!("{at}/{k}"), missing, keys);
                }
            }
            serde_json::Value::Array(a) => a.iter().for_each(|v| walk(v, at, missing, keys)),
            _ => {}
        }
    }
    let (mut missing, mut keys) = (Vec::new(), 0);
    walk(&schema, "", &mut missing, &mut keys);
    assert!(keys > 100, "only {keys} keys: is this the whole file?");
    assert!(
        missing.is_empty(),
        "keys without a description (add a /// line in src/config.rs): {missing:?}"
    );
}

#[test]
fn every_rules_file_names_the_schema_and_passes_it() {
    let files = rules_files();
    let schema = root().join("rules.schema.json");
    for f in &files {
        let text = std::fs::read_to_string(f).unwrap();
        let first = text.lines().next().unwrap_or_default();
        let named = first.strip_prefix(HEADER).unwrap_or_else(|| {
            panic!(
                "{}: the first line must be `{HEADER}<path to rules.schema.json>`",
                f.display()
            )
        });
        let resolved = f.parent().unwrap().join(named);
        assert_eq!(
            resolved.canonicalize().ok(),
            schema.canonicalize().ok(),
            "{}: `{named}` is not rules.schema.json",
            f.display()
        );
        let out = strangler()
            .args(["check", f.to_str().unwrap()])
            .env("STRANGLER_FORCE_TOKEN", "a-long-enough-tester-token")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}: {}",
            f.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let Some(validator) = require("check-jsonschema") else {
        return;
    };
    let out = Command::new(&validator)
        .arg("--schemafile")
        .arg(&schema)
        .args(&files)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    // The validator does refuse: a misspelt key, a mode that doesn't exist, a number as text.
    let dir = tempfile::tempdir().unwrap();
    let base = std::fs::read_to_string(root().join("rules.yaml")).unwrap();
    for (from, to) in [
        ("legacy: monolith", "legacy: monolith\nlistne: 0.0.0.0:1"),
        ("mode: shadow", "mode: sideways"),
        ("percent: 10", "percent: ten"),
    ] {
        assert!(base.contains(from), "rules.yaml has no `{from}` any more");
        let bad = dir.path().join("bad.yaml");
        std::fs::write(&bad, base.replacen(from, to, 1)).unwrap();
        let out = Command::new(&validator)
            .arg("--schemafile")
            .arg(&schema)
            .arg(&bad)
            .output()
            .unwrap();
        assert!(!out.status.success(), "check-jsonschema accepted `{to}`");
    }
}
