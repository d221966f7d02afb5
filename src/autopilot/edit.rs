//! Editing rules.yaml the way a careful person would: only one route's `mode` value, its canary
//! `percent` (adding the `canary:` entry in the file's own style when needed) and its rollout's
//! `paused`; every other byte, comment and blank line stays. Written with a compare-and-swap.

use std::path::Path;

use crate::config::{self, RouteFile};
use crate::rules::Step;

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum EditError {
    #[error("no route \"{0}\" in the file")]
    NoRoute(String),
    #[error("the file does not parse: {0}")]
    Parse(String),
    #[error("can't find where to write {0} for route \"{1}\"; edit it by hand")]
    NoPlace(&'static str, String),
    #[error("the edited file would not load: {0}")]
    Invalid(String),
}

/// Why a write did not happen.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    #[error("the file changed since it was read (someone else edited it); nothing written")]
    Changed,
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

fn route<'a>(file: &'a config::RulesFile, name: &str) -> Option<&'a RouteFile> {
    file.routes
        .iter()
        .map(|r| &r.value)
        .find(|r| r.name.value.trim() == name)
}

fn parse(path: &Path, text: &str) -> Result<config::RulesFile, EditError> {
    config::parse(path, text).map_err(|e| EditError::Parse(e.to_string()))
}

/// The byte range of a scalar's value.
fn range(at: &serde_saphyr::Location) -> Option<(usize, usize)> {
    let span = at.span();
    Some((span.byte_offset()? as usize, span.byte_len()? as usize))
}

/// Replace the scalar at `at` with `new`, keeping its quotes if it had any.
fn replace(text: &mut String, at: &serde_saphyr::Location, new: &str) -> Option<()> {
    let (start, len) = range(at)?;
    let old = text.get(start..start + len)?;
    let quote = old.chars().next().filter(|c| *c == '"' || *c == '\'');
    let new = match quote {
        Some(q) if !old.ends_with(q) || old.len() < 2 => return None,
        Some(q) => format!("{q}{new}{q}"),
        None => new.to_string(),
    };
    text.replace_range(start..start + len, &new);
    Some(())
}

/// Insert `key: value` into the mapping that holds the key whose value starts at `at`, just
/// before that key, in the mapping's own style: a new line at the key's indentation in a block
/// mapping, `key: value, ` in a flow mapping.
fn insert_before_key(text: &mut String, at: &serde_saphyr::Location, entry: &str) -> Option<()> {
    let (value_start, _) = range(at)?;
    let before = text.get(..value_start)?;
    let colon = before.trim_end().strip_suffix(':')?;
    let key_end = colon.trim_end().len();
    let key_start = colon[..key_end]
        .rfind(|c: char| c.is_whitespace() || c == '{' || c == ',' || c == '-')
        .map_or(0, |i| i + 1);
    let line_start = text[..key_start].rfind('\n').map_or(0, |i| i + 1);
    let lead = &text[line_start..key_start];
    let block = lead.trim_start().trim_start_matches('-').trim().is_empty();
    let insert = if block {
        format!("{entry}\n{}", " ".repeat(lead.chars().count()))
    } else {
        format!("{entry}, ")
    };
    text.insert_str(key_start, &insert);
    Some(())
}

/// A percent as written in rules.yaml: `5`, `2.5`.
fn percent(p: f64) -> String {
    if p.fract() == 0.0 {
        format!("{}", p as i64)
    } else {
        format!("{p}")
    }
}

/// One change to the text, at a byte offset (changes are made from the end backwards).
type Edit = (usize, Box<dyn Fn(&mut String) -> Option<()>>);

/// `text` with route `name` moved to `step`. The result is checked by parsing it again.
pub fn set_step(path: &Path, text: &str, name: &str, step: Step) -> Result<String, EditError> {
    let file = parse(path, text)?;
    let r = route(&file, name).ok_or_else(|| EditError::NoRoute(name.into()))?;
    let mut out = text.to_string();
    // Edit from the end of the file backwards, so earlier offsets stay right.
    let mode_at = r.mode.referenced;
    let percent_at = r.canary.as_ref().map(|c| c.value.percent.referenced);
    let mut edits: Vec<Edit> = Vec::new();
    let mode = step.mode().as_str();
    edits.push((
        range(&mode_at).map_or(0, |r| r.0),
        Box::new(move |t: &mut String| replace(t, &mode_at, mode)),
    ));
    if let Step::Canary(p) = step {
        match percent_at {
            Some(at) => edits.push((
                range(&at).map_or(0, |r| r.0),
                Box::new(move |t: &mut String| replace(t, &at, &percent(p))),
            )),
            None => {
                let entry = format!("canary: {{ percent: {} }}", percent(p));
                // Before the mode key: after the mode's own replacement in offset order.
                edits.push((
                    range(&mode_at).map_or(0, |r| r.0).saturating_sub(1),
                    Box::new(move |t: &mut String| insert_before_key(t, &mode_at, &entry)),
                ));
            }
        }
    }
    edits.sort_by_key(|e| std::cmp::Reverse(e.0));
    for (_, edit) in edits {
        edit(&mut out).ok_or_else(|| EditError::NoPlace("mode", name.into()))?;
    }
    check(path, &out, name, |r| {
        r.mode.value.mode() == step.mode()
            && match step {
                Step::Canary(p) => r
                    .canary
                    .as_ref()
                    .is_some_and(|c| (c.value.percent.value - p).abs() < 1e-9),
                _ => true,
            }
    })?;
    Ok(out)
}

/// `text` with route `name`'s rollout marked `paused: true` or `false`.
pub fn set_paused(path: &Path, text: &str, name: &str, paused: bool) -> Result<String, EditError> {
    let file = parse(path, text)?;
    let r = route(&file, name).ok_or_else(|| EditError::NoRoute(name.into()))?;
    let rollout = r.rollout.as_ref().ok_or(EditError::NoPlace("paused", name.into()))?;
    let mut out = text.to_string();
    let done = match &rollout.value.paused {
        Some(p) => replace(&mut out, &p.referenced, if paused { "true" } else { "false" }),
        None if !paused => Some(()),
        None => insert_before_key(&mut out, &rollout.value.steps.referenced, "paused: true"),
    };
    done.ok_or_else(|| EditError::NoPlace("paused", name.into()))?;
    check(path, &out, name, |r| {
        r.rollout
            .as_ref()
            .is_some_and(|ro| ro.value.paused.as_ref().is_some_and(|p| p.value) == paused)
    })?;
    Ok(out)
}

/// The edited text must parse, compile, and say what was meant.
fn check(path: &Path, text: &str, name: &str, meant: impl Fn(&RouteFile) -> bool) -> Result<(), EditError> {
    let file = parse(path, text).map_err(|e| EditError::Invalid(e.to_string()))?;
    crate::rules::compile(path, &file).map_err(|e| EditError::Invalid(e.to_string()))?;
    match route(&file, name) {
        Some(r) if meant(r) => Ok(()),
        _ => Err(EditError::Invalid(format!(
            "route \"{name}\" does not read as meant after the edit"
        ))),
    }
}

/// Replace the file with `new` only if it still holds `expected`: written to a temporary file
/// beside it, compared again, then renamed over it (atomic on one file system).
pub fn write_if_unchanged(path: &Path, expected: &[u8], new: &str) -> Result<(), WriteError> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let name = path.file_name().map_or("rules.yaml".into(), |n| n.to_string_lossy());
    let tmp = dir.join(format!(".{name}.autopilot.{}", std::process::id()));
    std::fs::write(&tmp, new)?;
    // As late as possible: a person's save between the read and here is kept.
    let now = std::fs::read(path)?;
    if now != expected {
        let _ = std::fs::remove_file(&tmp);
        return Err(WriteError::Changed);
    }
    if let Err(e) = std::fs::rename(&tmp, path) {
        let _ = std::fs::remove_file(&tmp);
        return Err(e.into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = "# the rules
legacy: mono
upstreams:
  mono: { url: \"http://127.0.0.1:1\" }
  svc: { url: \"http://127.0.0.1:2\" }

routes:
  # block style, with a comment inside
  - name: block
    match: { path: \"/a/{id}\", methods: [GET] }
    mode: shadow        # stays
    service: svc
    rollout:
      steps: [shadow, 1, 25, migrated]
      hold: 1s

  - { name: flow, match: { prefix: /b }, mode: shadow, service: svc, rollout: { steps: [shadow, 5, migrated] } }
";

    fn p() -> &'static Path {
        Path::new("rules.yaml")
    }

    /// The lines that differ between two texts.
    fn diff(a: &str, b: &str) -> Vec<(String, String)> {
        a.lines()
            .zip(b.lines())
            .filter(|(x, y)| x != y)
            .map(|(x, y)| (x.to_string(), y.to_string()))
            .collect()
    }

    #[test]
    fn a_block_route_moves_to_canary_and_on() {
        let one = set_step(p(), FILE, "block", Step::Canary(1.0)).unwrap();
        assert_eq!(one.lines().count(), FILE.lines().count() + 1, "{one}");
        assert!(
            one.contains("    canary: { percent: 1 }\n    mode: canary        # stays\n"),
            "{one}"
        );
        let two = set_step(p(), &one, "block", Step::Canary(25.0)).unwrap();
        assert_eq!(
            diff(&one, &two),
            [(
                "    canary: { percent: 1 }".to_string(),
                "    canary: { percent: 25 }".to_string()
            )]
        );
        let done = set_step(p(), &two, "block", Step::Migrated).unwrap();
        assert_eq!(
            diff(&two, &done),
            [(
                "    mode: canary        # stays".to_string(),
                "    mode: migrated        # stays".to_string()
            )]
        );
        let back = set_step(p(), &done, "block", Step::Shadow).unwrap();
        assert!(back.contains("mode: shadow        # stays"), "{back}");
        assert!(back.starts_with("# the rules\n") && back.contains("  # block style, with a comment inside\n"));
    }

    #[test]
    fn a_flow_route_gets_its_canary_entry_inline() {
        let out = set_step(p(), FILE, "flow", Step::Canary(5.0)).unwrap();
        let changed = diff(FILE, &out);
        assert_eq!(changed.len(), 1, "{out}");
        assert_eq!(
            changed[0].1,
            "  - { name: flow, match: { prefix: /b }, canary: { percent: 5 }, mode: canary, service: svc, rollout: { steps: [shadow, 5, migrated] } }"
        );
    }

    #[test]
    fn paused_is_added_then_flipped() {
        let paused = set_paused(p(), FILE, "block", true).unwrap();
        assert!(
            paused.contains("    rollout:\n      paused: true\n      steps: [shadow, 1, 25, migrated]\n"),
            "{paused}"
        );
        let resumed = set_paused(p(), &paused, "block", false).unwrap();
        assert!(resumed.contains("      paused: false\n"), "{resumed}");
        let flow = set_paused(p(), FILE, "flow", true).unwrap();
        assert!(
            flow.contains("rollout: { paused: true, steps: [shadow, 5, migrated] }"),
            "{flow}"
        );
    }

    #[test]
    fn an_unknown_route_is_an_error() {
        assert_eq!(
            set_step(p(), FILE, "nope", Step::Migrated),
            Err(EditError::NoRoute("nope".into()))
        );
    }

    #[test]
    fn a_write_happens_only_over_the_bytes_it_was_decided_on() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("rules.yaml");
        std::fs::write(&path, "old").unwrap();
        write_if_unchanged(&path, b"old", "new").unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "new");
        // A person saved in between: their bytes stay.
        std::fs::write(&path, "the person's edit").unwrap();
        assert!(matches!(
            write_if_unchanged(&path, b"new", "autopilot"),
            Err(WriteError::Changed)
        ));
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "the person's edit");
        assert_eq!(
            std::fs::read_dir(dir.path()).unwrap().count(),
            1,
            "no temporary file left"
        );
    }
}
