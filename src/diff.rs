//! Compare two answers to the same request: status, chosen headers, body (pure).
//!
//! JSON bodies are compared structurally: ignore paths (a JSONPath subset: `$.a.b`, `[*]`,
//! `[n]`; a path also ignores everything below it), arrays in order or as multisets, numbers
//! within a tolerance. Other bodies are compared byte for byte.

use std::fmt::Write;

use bytes::Bytes;
use http::{HeaderMap, HeaderName};
use serde::{Deserialize, Serialize};
use serde_json::Value;

mod fast;

/// One step of a path in a JSON document.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Seg {
    Key(String),
    Index(usize),
    /// `[*]`: any index (only in patterns).
    Any,
}

/// A parsed ignore pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ignore {
    Json(Vec<Seg>),
    Header(HeaderName),
}

/// Parse `$.a.b[*].c`, `$.items[3]`, `$["odd key"]` or `header:NAME`.
pub fn parse_ignore(s: &str) -> Result<Ignore, String> {
    if let Some(h) = s.strip_prefix("header:") {
        return HeaderName::from_bytes(h.trim().as_bytes())
            .map(Ignore::Header)
            .map_err(|_| format!("bad header name in \"{s}\""));
    }
    parse_path(s).map(Ignore::Json)
}

pub fn parse_path(s: &str) -> Result<Vec<Seg>, String> {
    let bad = |why: &str| format!("bad path \"{s}\": {why} (use e.g. $.items[*].id)");
    let rest = s.strip_prefix('$').ok_or_else(|| bad("must start with $"))?;
    let b = rest.as_bytes();
    let mut segs = Vec::new();
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'.' => {
                let end = rest[i + 1..].find(['.', '[']).map_or(rest.len(), |e| i + 1 + e);
                let key = &rest[i + 1..end];
                if key.is_empty() {
                    return Err(bad("empty key"));
                }
                segs.push(Seg::Key(key.to_string()));
                i = end;
            }
            b'[' => {
                let end = rest[i..].find(']').map(|e| i + e).ok_or_else(|| bad("unclosed ["))?;
                let inner = &rest[i + 1..end];
                segs.push(match inner {
                    "*" => Seg::Any,
                    q if q.len() >= 2
                        && (q.starts_with('"') && q.ends_with('"') || q.starts_with('\'') && q.ends_with('\'')) =>
                    {
                        Seg::Key(q[1..q.len() - 1].to_string())
                    }
                    n => Seg::Index(
                        n.parse()
                            .map_err(|_| bad("index must be a number, * or a quoted key"))?,
                    ),
                });
                i = end + 1;
            }
            _ => return Err(bad("expected . or [")),
        }
    }
    Ok(segs)
}

/// Render a concrete path as `$.a.b[2]`.
pub fn render(path: &[Seg]) -> String {
    let mut s = String::from("$");
    for seg in path {
        match seg {
            Seg::Key(k) if !k.is_empty() && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-') => {
                let _ = write!(s, ".{k}");
            }
            Seg::Key(k) => {
                let _ = write!(s, "[\"{k}\"]");
            }
            Seg::Index(n) => {
                let _ = write!(s, "[{n}]");
            }
            Seg::Any => s.push_str("[*]"),
        }
    }
    s
}

/// A concrete path as a JSON Pointer: `/a/b/2`.
pub fn pointer(path: &[Seg]) -> String {
    let mut s = String::new();
    for seg in path {
        s.push('/');
        match seg {
            Seg::Key(k) => s.push_str(&k.replace('~', "~0").replace('/', "~1")),
            Seg::Index(n) => {
                let _ = write!(s, "{n}");
            }
            Seg::Any => s.push('*'),
        }
    }
    s
}

/// The path with every index replaced by `[*]`: the bounded form used as a metric label and for noise.
pub fn generalize(path: &[Seg]) -> Vec<Seg> {
    path.iter()
        .map(|s| {
            if matches!(s, Seg::Index(_)) {
                Seg::Any
            } else {
                s.clone()
            }
        })
        .collect()
}

/// Does `pattern` cover `path` (equal, or a prefix of it)? `Ignored` answers the same, step by step.
#[cfg(test)]
fn covers(pattern: &[Seg], path: &[Step]) -> bool {
    pattern.len() <= path.len()
        && pattern.iter().zip(path).all(|(p, c)| match (p, c) {
            (Seg::Any, Step::Index(_)) => true,
            (Seg::Index(i), Step::Index(j)) => i == j,
            (Seg::Key(k), Step::Key(s)) => k == s,
            _ => false,
        })
}

/// Does one pattern segment match one step of a path?
fn seg_matches(seg: &Seg, step: Step) -> bool {
    match (seg, step) {
        (Seg::Any, Step::Index(_)) => true,
        (Seg::Index(i), Step::Index(j)) => *i == j,
        (Seg::Key(k), Step::Key(s)) => k == s,
        _ => false,
    }
}

/// The ignore patterns (`ignore`, then `noise`) that still match the path walked so far, one bit
/// each per depth. A step down keeps only the patterns whose next segment matches it, so below
/// the first key that no pattern names (most of a document) the check at each value is one load.
/// `here()` answers what `covers` answers for every pattern, without re-reading the path.
#[derive(Clone)]
struct Ignored<'c> {
    ignore: &'c [Vec<Seg>],
    noise: &'c [Vec<Seg>],
    /// `u64`s per depth (0 with no patterns).
    words: usize,
    depth: usize,
    /// `words` masks per depth, the root's first.
    live: Vec<u64>,
}

impl<'c> Ignored<'c> {
    fn new(ignore: &'c [Vec<Seg>], noise: &'c [Vec<Seg>]) -> Ignored<'c> {
        let n = ignore.len() + noise.len();
        let words = n.div_ceil(64);
        // Room for a few levels: answers are seldom deeper.
        let mut live = Vec::with_capacity(words * 8);
        live.extend((0..words).map(|w| match n - w * 64 {
            64.. => u64::MAX,
            bits => (1u64 << bits) - 1,
        }));
        Ignored {
            ignore,
            noise,
            words,
            depth: 0,
            live,
        }
    }

    fn pattern(&self, i: usize) -> &'c [Seg] {
        match self.ignore.get(i) {
            Some(p) => p,
            None => &self.noise[i - self.ignore.len()],
        }
    }

    /// The live patterns at the current depth, as pattern indices.
    fn each_live(&self, mut f: impl FnMut(usize) -> bool) -> bool {
        let base = self.live.len() - self.words;
        (0..self.words).any(|w| {
            let mut bits = self.live[base + w];
            while bits != 0 {
                let b = bits.trailing_zeros() as usize;
                bits &= bits - 1;
                if f(w * 64 + b) {
                    return true;
                }
            }
            false
        })
    }

    /// Is the value at the current path ignored?
    fn here(&self) -> bool {
        self.each_live(|i| self.pattern(i).len() <= self.depth)
    }

    /// No pattern reaches below the current value: nothing under it is ignored.
    fn none_below(&self) -> bool {
        self.live[self.live.len() - self.words..].iter().all(|&m| m == 0)
    }

    /// Step down into `step`.
    fn down(&mut self, step: Step) {
        let base = self.live.len() - self.words;
        for w in 0..self.words {
            let mut bits = self.live[base + w];
            let mut keep = 0;
            while bits != 0 {
                let b = bits.trailing_zeros();
                bits &= bits - 1;
                // A pattern already matched whole covers everything below it.
                if self
                    .pattern(w * 64 + b as usize)
                    .get(self.depth)
                    .is_none_or(|seg| seg_matches(seg, step))
                {
                    keep |= 1 << b;
                }
            }
            self.live.push(keep);
        }
        self.depth += 1;
    }

    /// Step back up.
    fn up(&mut self) {
        self.live.truncate(self.live.len() - self.words);
        self.depth -= 1;
    }
}

/// A step of the path being walked, borrowing the key from the document (no allocation).
#[derive(Debug, Clone, Copy)]
enum Step<'v> {
    Key(&'v str),
    Index(usize),
}

fn owned(path: &[Step]) -> Vec<Seg> {
    path.iter()
        .map(|s| match s {
            Step::Key(k) => Seg::Key((*k).to_string()),
            Step::Index(i) => Seg::Index(*i),
        })
        .collect()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ArrayOrder {
    #[default]
    Strict,
    Any,
}

/// How to compare, compiled from a route's `shadow:` block.
#[derive(Debug, Clone, Default)]
pub struct Compare {
    pub ignore: Vec<Vec<Seg>>,
    pub ignore_headers: Vec<HeaderName>,
    pub compare_headers: Vec<HeaderName>,
    pub array_order: ArrayOrder,
    /// Numbers are equal when they differ by at most this (absolute).
    pub numeric_tolerance: f64,
}

/// One side's answer, as captured.
#[derive(Debug, Clone, Default)]
pub struct Answer {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: Bytes,
}

/// The headers of `from` that a comparison reads: `content-type` (JSON or bytes) and `compared`.
pub fn read_headers(from: &HeaderMap, compared: &[HeaderName]) -> HeaderMap {
    let mut kept = HeaderMap::new();
    let content_type = (!compared.contains(&http::header::CONTENT_TYPE)).then_some(&http::header::CONTENT_TYPE);
    for name in compared.iter().chain(content_type) {
        for v in from.get_all(name) {
            kept.append(name.clone(), v.clone());
        }
    }
    kept
}

/// A difference: where, and both values (`None`: absent on that side). Read back (a mismatch
/// kept in `state_dir`), the skipped fields are empty: only a fresh comparison uses them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Difference {
    pub path: String,
    /// The path with indices as `[*]`.
    #[serde(skip)]
    pub pattern: String,
    /// JSON Pointer (RFC 6901) of a body difference; `None` for status, header and byte differences.
    #[serde(skip)]
    pub pointer: Option<String>,
    /// The concrete path of a body difference (what noise learning generalizes).
    #[serde(skip)]
    pub at: Option<Vec<Seg>>,
    pub legacy: Option<Value>,
    pub new: Option<Value>,
}

fn is_json(h: &HeaderMap) -> bool {
    h.get(http::header::CONTENT_TYPE).is_some_and(|v| {
        let ct = v
            .as_bytes()
            .split(|&b| b == b';')
            .next()
            .unwrap_or_default()
            .trim_ascii();
        ct.eq_ignore_ascii_case(b"application/json")
            || ct.len() >= 5 && ct[ct.len() - 5..].eq_ignore_ascii_case(b"+json")
    })
}

fn header_text(h: &HeaderMap, name: &HeaderName) -> Option<Value> {
    let values: Vec<String> = h
        .get_all(name)
        .iter()
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
        .collect();
    (!values.is_empty()).then(|| Value::String(values.join(", ")))
}

/// Per-thread copies of both bodies (simd-json parses in place) and the parser's buffers.
#[derive(Default)]
struct Scratch {
    legacy: Vec<u8>,
    new: Vec<u8>,
    buffers: simd_json::Buffers,
}

thread_local! {
    static SCRATCH: std::cell::RefCell<Scratch> = std::cell::RefCell::new(Scratch::default());
}

/// Compare two answers. `noise` holds learned non-deterministic paths, ignored like `ignore`.
pub fn compare(cfg: &Compare, noise: &[Vec<Seg>], legacy: &Answer, new: &Answer) -> Vec<Difference> {
    let mut out = Vec::new();
    if legacy.status != new.status {
        out.push(Difference {
            path: "status".into(),
            pattern: "status".into(),
            pointer: None,
            at: None,
            legacy: Some(legacy.status.into()),
            new: Some(new.status.into()),
        });
    }
    for name in cfg.compare_headers.iter().filter(|n| !cfg.ignore_headers.contains(n)) {
        // Raw values first: the text (allocated) is only needed where they differ.
        if legacy.headers.get_all(name).iter().eq(new.headers.get_all(name).iter()) {
            continue;
        }
        let (a, b) = (header_text(&legacy.headers, name), header_text(&new.headers, name));
        if a != b {
            let path = format!("header:{name}");
            out.push(Difference {
                pattern: path.clone(),
                path,
                pointer: None,
                at: None,
                legacy: a,
                new: b,
            });
        }
    }
    if legacy.body == new.body {
        // Byte for byte the same: no body difference, whatever the content type.
        return out;
    }
    if is_json(&legacy.headers) && is_json(&new.headers) {
        // Most copies agree but in ignored values: prove that from the bytes first (one pass, no
        // parse; see `fast`). The structural diff runs only when that cannot.
        if fast::equal_but_ignored(&legacy.body, &new.body, &cfg.ignore, noise) {
            return out;
        }
        if structural(cfg, noise, &legacy.body, &new.body, &mut out) {
            return out;
        }
    }
    if legacy.body != new.body {
        let text = |b: &Bytes| Value::String(String::from_utf8_lossy(&b[..b.len().min(256)]).into_owned());
        out.push(Difference {
            path: "body".into(),
            pattern: "body".into(),
            pointer: None,
            at: None,
            legacy: Some(text(&legacy.body)),
            new: Some(text(&new.body)),
        });
    }
    out
}

/// The structural diff of two JSON bodies, appended to `out`. `false` if either does not parse.
fn structural(cfg: &Compare, noise: &[Vec<Seg>], legacy: &[u8], new: &[u8], out: &mut Vec<Difference>) -> bool {
    // simd-json parses in place onto a flat tape, which the walk reads directly: no value
    // trees are built, and the diff runs for every shadowed request. The input copies and
    // the parser's buffers are kept per thread, so a compare allocates only the two tapes.
    SCRATCH.with(|scratch| {
        let Ok(mut scratch) = scratch.try_borrow_mut() else {
            return false;
        };
        let Scratch {
            legacy: x,
            new: y,
            buffers,
        } = &mut *scratch;
        x.clear();
        x.extend_from_slice(legacy);
        y.clear();
        y.extend_from_slice(new);
        let Ok(a) = simd_json::to_tape_with_buffers(x, buffers) else {
            return false;
        };
        let Ok(b) = simd_json::to_tape_with_buffers(y, buffers) else {
            return false;
        };
        let (Some(_), Some(_)) = (a.0.first(), b.0.first()) else {
            return false;
        };
        let mut walker = Walker {
            cfg,
            out,
            path: Vec::new(),
            ignored: Ignored::new(&cfg.ignore, noise),
        };
        walker.diff(Json(&a.0), Json(&b.0));
        true
    })
}

struct Walker<'a, 'v> {
    cfg: &'a Compare,
    out: &'a mut Vec<Difference>,
    path: Vec<Step<'v>>,
    ignored: Ignored<'a>,
}

impl<'v> Walker<'_, 'v> {
    fn ignored(&self) -> bool {
        self.ignored.here()
    }

    fn enter(&mut self, step: Step<'v>) {
        self.path.push(step);
        self.ignored.down(step);
    }

    fn leave(&mut self) {
        self.path.pop();
        self.ignored.up();
    }

    fn push(&mut self, legacy: Option<Json<'_, 'v>>, new: Option<Json<'_, 'v>>) {
        let path = owned(&self.path);
        self.out.push(Difference {
            path: render(&path),
            pattern: render(&generalize(&path)),
            pointer: Some(pointer(&path)),
            legacy: legacy.map(Json::plain),
            new: new.map(Json::plain),
            at: Some(path),
        });
    }

    fn diff(&mut self, a: Json<'_, 'v>, b: Json<'_, 'v>) {
        if self.ignored() {
            return;
        }
        match (a.node(), b.node()) {
            (Node::Object { len: n, .. }, Node::Object { len: m, .. }) => {
                // Document order: the legacy keys, then keys only the new answer has. Answers
                // usually list their keys in the same order, so each key is looked for at its
                // own place first, and the lookups are built only when one is not there.
                let mut in_step = n == m;
                let mut lookup = None;
                let mut at_place = b.entries();
                for (k, va) in a.entries() {
                    self.enter(Step::Key(k));
                    let vb = match at_place.next().filter(|(kb, _)| *kb == k) {
                        Some((_, vb)) => Some(vb),
                        None => {
                            in_step = false;
                            lookup.get_or_insert_with(|| Lookup::new(b)).get(b, k)
                        }
                    };
                    match vb {
                        Some(vb) => self.diff(va, vb),
                        None if !self.ignored() => self.push(Some(va), None),
                        None => {}
                    }
                    self.leave();
                }
                if in_step {
                    // Every key matched in place and the counts agree: no key is new-only.
                    return;
                }
                let lookup = Lookup::new(a);
                for (k, vb) in b.entries().filter(|(k, _)| lookup.get(a, k).is_none()) {
                    self.enter(Step::Key(k));
                    if !self.ignored() {
                        self.push(None, Some(vb));
                    }
                    self.leave();
                }
            }
            (Node::Array { .. }, Node::Array { .. }) if self.cfg.array_order == ArrayOrder::Any => {
                let (x, y): (Vec<_>, Vec<_>) = (a.items().collect(), b.items().collect());
                self.diff_multiset(&x, &y)
            }
            (Node::Array { len: n, .. }, Node::Array { len: m, .. }) => {
                let (mut x, mut y) = (a.items(), b.items());
                for i in 0..(*n).max(*m) {
                    self.enter(Step::Index(i));
                    match (x.next(), y.next()) {
                        (Some(va), Some(vb)) => self.diff(va, vb),
                        (va, vb) if !self.ignored() => self.push(va, vb),
                        _ => {}
                    }
                    self.leave();
                }
            }
            (Node::Static(x), Node::Static(y)) => {
                let same = match (number(x), number(y)) {
                    (Some(Num::Int(i)), Some(Num::Int(j))) if self.cfg.numeric_tolerance == 0.0 => i == j,
                    (Some(i), Some(j)) => (i.as_f64() - j.as_f64()).abs() <= self.cfg.numeric_tolerance,
                    _ => x == y,
                };
                if !same {
                    self.push(Some(a), Some(b));
                }
            }
            (Node::String(x), Node::String(y)) if x == y => {}
            _ => self.push(Some(a), Some(b)),
        }
    }

    /// Arrays as multisets: each legacy element pairs with an equal, unused new element.
    fn diff_multiset(&mut self, x: &[Json<'_, 'v>], y: &[Json<'_, 'v>]) {
        let mut used = vec![false; y.len()];
        let mut unmatched = Vec::new();
        for (i, &va) in x.iter().enumerate() {
            self.enter(Step::Index(i));
            let found = (0..y.len()).find(|&j| !used[j] && self.equal_here(va, y[j]));
            self.leave();
            match found {
                Some(j) => used[j] = true,
                None => unmatched.push(i),
            }
        }
        for i in unmatched {
            self.enter(Step::Index(i));
            self.push(Some(x[i]), None);
            self.leave();
        }
        for (j, &vb) in y.iter().enumerate().filter(|(j, _)| !used[*j]) {
            self.enter(Step::Index(j));
            self.push(None, Some(vb));
            self.leave();
        }
    }

    /// Equal at the current path, under the same ignore rules.
    fn equal_here(&mut self, a: Json<'_, 'v>, b: Json<'_, 'v>) -> bool {
        let mut scratch = Vec::new();
        let mut sub = Walker {
            cfg: self.cfg,
            out: &mut scratch,
            path: self.path.clone(),
            ignored: self.ignored.clone(),
        };
        sub.diff(a, b);
        scratch.is_empty()
    }
}

use simd_json::Node;

/// One JSON value on a simd-json tape: its first node and everything nested under it. Walking
/// the tape directly builds no value tree (no map per object), which is most of a parse's cost.
#[derive(Clone, Copy)]
struct Json<'t, 'i>(&'t [Node<'i>]);

/// Nodes a value takes on the tape, its own included.
fn span(n: &Node) -> usize {
    match n {
        Node::Object { count, .. } | Node::Array { count, .. } => count + 1,
        _ => 1,
    }
}

impl<'t, 'i> Json<'t, 'i> {
    fn node(&self) -> &'t Node<'i> {
        &self.0[0]
    }

    /// An object's keys and values, in document order.
    fn entries(self) -> impl Iterator<Item = (&'i str, Json<'t, 'i>)> {
        let len = match self.node() {
            Node::Object { len, .. } => *len,
            _ => 0,
        };
        let mut at = 1;
        (0..len).filter_map(move |_| {
            let key = match self.0.get(at)? {
                Node::String(k) => *k,
                _ => return None,
            };
            let n = span(self.0.get(at + 1)?);
            let value = Json(&self.0[at + 1..at + 1 + n]);
            at += 1 + n;
            Some((key, value))
        })
    }

    /// An array's elements, in order.
    fn items(self) -> impl Iterator<Item = Json<'t, 'i>> {
        let len = match self.node() {
            Node::Array { len, .. } => *len,
            _ => 0,
        };
        let mut at = 1;
        (0..len).filter_map(move |_| {
            let n = span(self.0.get(at)?);
            let value = Json(&self.0[at..at + n]);
            at += n;
            Some(value)
        })
    }

    /// The value as serde_json, for a stored difference.
    fn plain(self) -> Value {
        match self.node() {
            Node::String(s) => Value::String((*s).to_string()),
            Node::Static(st) => {
                use simd_json::StaticNode::*;
                match *st {
                    I64(i) => i.into(),
                    U64(u) => u.into(),
                    F64(f) => serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number),
                    Bool(b) => b.into(),
                    Null => Value::Null,
                }
            }
            Node::Array { .. } => Value::Array(self.items().map(Json::plain).collect()),
            Node::Object { .. } => Value::Object(self.entries().map(|(k, v)| (k.to_string(), v.plain())).collect()),
        }
    }
}

/// Key lookup in one object: a linear scan for small objects, a hash map past `WIDE` keys.
enum Lookup<'t, 'i> {
    Scan,
    Map(std::collections::HashMap<&'i str, Json<'t, 'i>>),
}

const WIDE: usize = 16;

impl<'t, 'i> Lookup<'t, 'i> {
    fn new(obj: Json<'t, 'i>) -> Lookup<'t, 'i> {
        match obj.node() {
            Node::Object { len, .. } if *len > WIDE => Lookup::Map(obj.entries().collect()),
            _ => Lookup::Scan,
        }
    }

    fn get(&self, obj: Json<'t, 'i>, key: &str) -> Option<Json<'t, 'i>> {
        match self {
            Lookup::Scan => obj.entries().find(|(k, _)| *k == key).map(|(_, v)| v),
            Lookup::Map(m) => m.get(key).copied(),
        }
    }
}

#[derive(Clone, Copy)]
enum Num {
    Int(i128),
    Float(f64),
}

impl Num {
    fn as_f64(self) -> f64 {
        match self {
            Num::Int(i) => i as f64,
            Num::Float(f) => f,
        }
    }
}

fn number(n: &simd_json::StaticNode) -> Option<Num> {
    use simd_json::StaticNode::*;
    match *n {
        I64(i) => Some(Num::Int(i128::from(i))),
        U64(u) => Some(Num::Int(i128::from(u))),
        F64(f) => Some(Num::Float(f)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn answer(status: u16, body: Value) -> Answer {
        let mut headers = HeaderMap::new();
        headers.insert(http::header::CONTENT_TYPE, "application/json".parse().unwrap());
        Answer {
            status,
            headers,
            body: Bytes::from(body.to_string()),
        }
    }

    fn cfg(ignore: &[&str]) -> Compare {
        Compare {
            ignore: ignore
                .iter()
                .map(|s| match parse_ignore(s).unwrap() {
                    Ignore::Json(p) => p,
                    Ignore::Header(_) => unreachable!(),
                })
                .collect(),
            compare_headers: vec![http::header::CONTENT_TYPE],
            ..Compare::default()
        }
    }

    fn paths(d: &[Difference]) -> Vec<&str> {
        d.iter().map(|d| d.path.as_str()).collect()
    }

    #[test]
    fn parses_paths() {
        let cases = [
            ("$.a.b", vec![Seg::Key("a".into()), Seg::Key("b".into())]),
            (
                "$.items[*].request_id",
                vec![Seg::Key("items".into()), Seg::Any, Seg::Key("request_id".into())],
            ),
            ("$.items[3]", vec![Seg::Key("items".into()), Seg::Index(3)]),
            ("$[\"odd key\"]", vec![Seg::Key("odd key".into())]),
            ("$", vec![]),
        ];
        for (s, want) in cases {
            assert_eq!(parse_path(s).unwrap(), want, "{s}");
        }
        for bad in ["a.b", "$..a", "$.a[", "$.a[x]", "$a"] {
            assert!(parse_path(bad).is_err(), "{bad}");
        }
        assert_eq!(parse_ignore("header:Date").unwrap(), Ignore::Header(http::header::DATE));
    }

    /// An answer with the JSON text exactly as given (`json!` sorts object keys).
    fn raw(text: &str, content_type: &str) -> Answer {
        let mut headers = HeaderMap::new();
        headers.insert(http::header::CONTENT_TYPE, content_type.parse().unwrap());
        Answer {
            status: 200,
            headers,
            body: Bytes::from(text.to_string()),
        }
    }

    #[test]
    fn keys_in_another_order_missing_or_added() {
        let cases: [(&str, &str, Vec<&str>); 6] = [
            (r#"{"a":1,"b":2,"c":3}"#, r#"{"c":3,"a":1,"b":2}"#, vec![]),
            (r#"{"a":1,"b":2}"#, r#"{"b":2,"a":5}"#, vec!["$.a"]),
            (r#"{"a":1,"b":2}"#, r#"{"a":1,"c":2}"#, vec!["$.b", "$.c"]),
            (r#"{"a":1,"b":2}"#, r#"{"b":2,"c":3,"a":1}"#, vec!["$.c"]),
            (
                r#"{"a":1,"x":{"p":1,"q":2}}"#,
                r#"{"x":{"q":2,"p":9},"a":1}"#,
                vec!["$.x.p"],
            ),
            (r#"{"a":1,"b":2,"c":3}"#, r#"{"a":1,"b":2}"#, vec!["$.c"]),
        ];
        for (a, b, want) in cases {
            let d = compare(&cfg(&[]), &[], &raw(a, "application/json"), &raw(b, "application/json"));
            assert_eq!(paths(&d), want, "{a} vs {b}");
        }
    }

    #[test]
    fn json_is_told_by_the_content_type() {
        for (ct, json) in [
            ("application/json", true),
            ("Application/JSON; charset=utf-8", true),
            ("application/problem+json", true),
            (" application/json ;q=1", true),
            ("text/plain", false),
            ("application/jsonx", false),
            ("json", false),
        ] {
            let d = compare(
                &cfg(&[]),
                &[],
                &raw(r#"{"a":1, "b":2}"#, ct),
                &raw(r#"{"b":2,"a":1}"#, ct),
            );
            assert_eq!(d.is_empty(), json, "{ct}: {:?}", paths(&d));
        }
    }

    #[test]
    fn structural_differences() {
        let cases: Vec<(&[&str], Value, Value, Vec<&str>)> = vec![
            (&[], json!({"a": 1, "b": [1, 2]}), json!({"b": [1, 2], "a": 1}), vec![]),
            (&[], json!({"a": 1}), json!({"a": 2}), vec!["$.a"]),
            (&[], json!({"a": 1}), json!({"a": 1, "extra": true}), vec!["$.extra"]),
            (
                &[],
                json!({"a": {"b": [1, 2, 3]}}),
                json!({"a": {"b": [1, 5]}}),
                vec!["$.a.b[1]", "$.a.b[2]"],
            ),
            (
                &["$.served_at"],
                json!({"served_at": "x", "v": 1}),
                json!({"served_at": "y", "v": 1}),
                vec![],
            ),
            (
                &["$.items[*].rid"],
                json!({"items": [{"rid": 1, "q": 1}, {"rid": 2, "q": 2}]}),
                json!({"items": [{"rid": 9, "q": 1}, {"rid": 8, "q": 3}]}),
                vec!["$.items[1].q"],
            ),
            (
                &["$.meta"],
                json!({"meta": {"a": 1, "b": [1]}}),
                json!({"meta": {"c": 2}}),
                vec![],
            ),
            (
                &["$.items[0]"],
                json!({"items": [1, 2]}),
                json!({"items": [9, 2]}),
                vec![],
            ),
            (
                &[],
                json!({"odd key": 1}),
                json!({"odd key": 2}),
                vec!["$[\"odd key\"]"],
            ),
            (&[], json!([1, "a", null]), json!([1, "a", false]), vec!["$[2]"]),
        ];
        for (ignore, a, b, want) in cases {
            let d = compare(&cfg(ignore), &[], &answer(200, a.clone()), &answer(200, b.clone()));
            assert_eq!(paths(&d), want, "{a} vs {b} ignoring {ignore:?}");
        }
    }

    #[test]
    fn values_status_headers_and_bytes() {
        let d = compare(
            &cfg(&[]),
            &[],
            &answer(200, json!({"a": 1})),
            &answer(404, json!({"a": 2})),
        );
        assert_eq!(
            d[0],
            Difference {
                path: "status".into(),
                pattern: "status".into(),
                pointer: None,
                at: None,
                legacy: Some(json!(200)),
                new: Some(json!(404))
            }
        );
        assert_eq!(d[1].pointer.as_deref(), Some("/a"));
        assert_eq!(d[1].legacy, Some(json!(1)));
        assert_eq!(d[1].new, Some(json!(2)));

        let mut b = answer(200, json!({}));
        b.headers
            .insert(http::header::CONTENT_TYPE, "text/plain".parse().unwrap());
        let d = compare(&cfg(&[]), &[], &answer(200, json!({})), &b);
        assert_eq!(paths(&d), vec!["header:content-type"]);

        let text = |s: &str| {
            let mut h = HeaderMap::new();
            h.insert(http::header::CONTENT_TYPE, "text/html".parse().unwrap());
            Answer {
                status: 200,
                headers: h,
                body: Bytes::from(s.to_string()),
            }
        };
        assert!(compare(&cfg(&[]), &[], &text("<p>a</p>"), &text("<p>a</p>")).is_empty());
        assert_eq!(
            paths(&compare(&cfg(&[]), &[], &text("<p>a</p>"), &text("<p>b</p>"))),
            vec!["body"]
        );
    }

    #[test]
    fn arrays_as_multisets_and_numeric_tolerance() {
        let mut c = cfg(&["$.items[*].rid"]);
        c.array_order = ArrayOrder::Any;
        let a = json!({"items": [{"id": 1, "rid": "x"}, {"id": 2, "rid": "y"}]});
        let b = json!({"items": [{"id": 2, "rid": "q"}, {"id": 1, "rid": "r"}]});
        assert!(compare(&c, &[], &answer(200, a), &answer(200, b)).is_empty());
        let d = compare(
            &c,
            &[],
            &answer(200, json!({"items": [1, 2, 2]})),
            &answer(200, json!({"items": [2, 1, 3]})),
        );
        assert_eq!(paths(&d), vec!["$.items[2]", "$.items[2]"]);
        assert_eq!(
            (d[0].legacy.clone(), d[1].new.clone()),
            (Some(json!(2)), Some(json!(3)))
        );

        let mut c = cfg(&[]);
        c.numeric_tolerance = 0.01;
        assert!(compare(
            &c,
            &[],
            &answer(200, json!({"p": 1.0})),
            &answer(200, json!({"p": 1.005}))
        )
        .is_empty());
        assert_eq!(
            paths(&compare(
                &c,
                &[],
                &answer(200, json!({"p": 1.0})),
                &answer(200, json!({"p": 1.02}))
            )),
            vec!["$.p"]
        );
        assert_eq!(
            paths(&compare(
                &cfg(&[]),
                &[],
                &answer(200, json!({"p": 1})),
                &answer(200, json!({"p": 1.0}))
            )),
            Vec::<&str>::new()
        );
    }

    #[test]
    fn learned_noise_is_ignored_and_patterns_are_general() {
        let noise = vec![parse_path("$.items[*].at").unwrap()];
        let a = json!({"items": [{"at": 1, "v": 1}]});
        let b = json!({"items": [{"at": 2, "v": 2}]});
        let d = compare(&cfg(&[]), &noise, &answer(200, a), &answer(200, b));
        assert_eq!(paths(&d), vec!["$.items[0].v"]);
        assert_eq!(d[0].pattern, "$.items[*].v");
    }

    fn seg() -> impl proptest::strategy::Strategy<Value = Seg> {
        use proptest::prelude::*;
        prop_oneof![
            prop_oneof![Just("a"), Just("b")].prop_map(|k| Seg::Key(k.to_string())),
            (0usize..2).prop_map(Seg::Index),
            Just(Seg::Any),
        ]
    }

    proptest::proptest! {
        /// Walking down a path step by step, `Ignored` says "ignored" exactly where some pattern
        /// covers the path so far, with the patterns split anyhow between `ignore` and noise, and
        /// more of them than one mask holds.
        #[test]
        fn ignored_step_by_step_is_covers(
            patterns in proptest::collection::vec(proptest::collection::vec(seg(), 1..4), 0..140),
            split in 0usize..140,
            path in proptest::collection::vec(seg(), 0..5),
        ) {
            let path: Vec<Step> = path
                .iter()
                .map(|s| match s {
                    Seg::Key(k) => Step::Key(k.as_str()),
                    Seg::Index(i) => Step::Index(*i),
                    Seg::Any => Step::Key("c"),
                })
                .collect();
            let (ignore, noise) = patterns.split_at(split.min(patterns.len()));
            let mut ignored = Ignored::new(ignore, noise);
            for depth in 0..=path.len() {
                let want = patterns.iter().any(|p| covers(p, &path[..depth]));
                proptest::prop_assert_eq!(ignored.here(), want, "at {:?}", &path[..depth]);
                if let Some(step) = path.get(depth) {
                    ignored.down(*step);
                }
            }
            for _ in 0..path.len() {
                ignored.up();
            }
            proptest::prop_assert_eq!(ignored.here(), patterns.iter().any(|p| p.is_empty()));
        }
    }
}
