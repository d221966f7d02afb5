//! Folding request paths into endpoint templates: identifier segments become `{id}`, and a
//! position under one parent that shows too many distinct literals becomes `{param}`.
//!
//! Pure and single-threaded: the folder owns one `Folder` and feeds it paths off the request path.

// Seeded per process and several times faster than SipHash on these short keys; the maps are
// bounded, so a flood of crafted paths can only fill them, not grow them.
use foldhash::{HashMap, HashMapExt};

/// Segments kept per path; deeper ones are folded into the last as `{rest}`.
pub const MAX_DEPTH: usize = 12;
/// A literal longer than this is an opaque value, not a name someone wrote in a router.
const MAX_LITERAL: usize = 48;

/// Does this segment look like a value rather than a name: an integer, a UUID, long hex, a date,
/// an e-mail address, or a long opaque token?
pub fn is_identifier(seg: &str) -> bool {
    let b = seg.as_bytes();
    if b.is_empty() {
        return false;
    }
    if b.iter().all(u8::is_ascii_digit) {
        return true;
    }
    let hex = |s: &[u8]| s.iter().all(u8::is_ascii_hexdigit);
    // 8-4-4-4-12
    if b.len() == 36 && [8, 13, 18, 23].iter().all(|&i| b[i] == b'-') {
        return b.split(|&c| c == b'-').all(hex);
    }
    if b.len() >= 16 && hex(b) {
        return true;
    }
    // 2024-01-31, 2024-01-31T12:00:00Z
    if b.len() >= 10 && b[..4].iter().all(u8::is_ascii_digit) && b[4] == b'-' && b[7] == b'-' {
        return b[5..7].iter().all(u8::is_ascii_digit) && b[8..10].iter().all(u8::is_ascii_digit);
    }
    if b.contains(&b'@') && b.contains(&b'.') {
        return true;
    }
    // A code with a long number in it: SKU-0001, INV2024001, ord_12345.
    if b.windows(4).any(|w| w.iter().all(u8::is_ascii_digit)) {
        return true;
    }
    // An opaque token: long, and letters mixed with digits (base64url, ULIDs, session ids).
    if b.len() >= 20
        && b.iter().any(u8::is_ascii_digit)
        && b.iter().any(u8::is_ascii_alphabetic)
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'=' | b'.' | b'~'))
    {
        return true;
    }
    b.len() > MAX_LITERAL
}

/// The distinct literals seen at one position under one parent.
#[derive(Debug, Default)]
struct Position {
    /// Literal to the requests seen with it (while open), or the literals kept (once folded).
    literals: HashMap<Box<str>, u64>,
    hits: u64,
    /// Past `fold_after` distinct literals: every literal not kept is `{param}`.
    folded: bool,
}

/// What a fold changed: templates to rename (old prefix + segment -> the same with `{param}`).
#[derive(Debug, PartialEq, Eq)]
pub struct Renamed {
    /// The parent template, e.g. `/products`.
    pub parent: String,
    /// The literals that now read `{param}` under it.
    pub literals: Vec<String>,
}

/// Learns which positions are parameters. Bounded: at most `max_positions` parents are
/// tracked, each with at most `fold_after + 1` literals.
#[derive(Debug)]
pub struct Folder {
    fold_after: usize,
    max_positions: usize,
    positions: HashMap<String, Position>,
}

impl Folder {
    pub fn new(fold_after: usize, max_positions: usize) -> Folder {
        Folder {
            fold_after: fold_after.max(1),
            max_positions,
            positions: HashMap::new(),
        }
    }

    /// The template of a normalized path. `renamed` gets the folds this path caused, so that
    /// endpoints learned earlier under the old names can be merged.
    pub fn template(&mut self, path: &str, renamed: &mut Vec<Renamed>) -> String {
        let mut out = String::with_capacity(path.len());
        self.template_into(path, 1, renamed, &mut out);
        out
    }

    /// [`Folder::template`] of a path seen `hits` times, appended to `out` (a reused buffer: no
    /// allocation once it is big enough).
    pub fn template_into(&mut self, path: &str, hits: u64, renamed: &mut Vec<Renamed>, out: &mut String) {
        let base = out.len();
        let mut segments = path.split('/').skip(1).filter(|s| !s.is_empty()).peekable();
        if segments.peek().is_none() {
            out.push('/');
            return;
        }
        for (depth, seg) in segments.enumerate() {
            if depth == MAX_DEPTH {
                out.push_str("/{rest}");
                break;
            }
            let part = if is_identifier(seg) {
                "{id}"
            } else {
                self.literal(&out[base..], seg, hits, renamed)
            };
            out.push('/');
            out.push_str(part);
        }
        if path.ends_with('/') && &out[base..] != "/" {
            out.push('/');
        }
    }

    /// `seg` itself, or `{param}` when the position under `parent` is folded and `seg` not kept.
    fn literal<'s>(&mut self, parent: &str, seg: &'s str, hits: u64, renamed: &mut Vec<Renamed>) -> &'s str {
        let fold_after = self.fold_after;
        if let Some(pos) = self.positions.get_mut(parent) {
            return pos.see(parent, seg, hits, fold_after, renamed);
        }
        if self.positions.len() >= self.max_positions {
            // Full: an unknown parent's literals can't be told apart from values.
            return "{param}";
        }
        self.positions
            .entry(parent.to_string())
            .or_default()
            .see(parent, seg, hits, fold_after, renamed)
    }

    /// Parents tracked now (for the memory bound).
    pub fn positions(&self) -> usize {
        self.positions.len()
    }
}

impl Position {
    /// Count `seg` at this position (under `parent`) `hits` times: `seg` itself, or `{param}`
    /// once folded.
    fn see<'s>(
        &mut self,
        parent: &str,
        seg: &'s str,
        hits: u64,
        fold_after: usize,
        renamed: &mut Vec<Renamed>,
    ) -> &'s str {
        self.hits += hits;
        if self.folded {
            return if self.literals.contains_key(seg) {
                seg
            } else {
                "{param}"
            };
        }
        // Looked up borrowed: a name seen before costs no allocation.
        match self.literals.get_mut(seg) {
            Some(n) => *n += hits,
            None => {
                self.literals.insert(seg.into(), hits);
            }
        }
        if self.literals.len() <= fold_after {
            return seg;
        }
        // Too many names at one position: they are values. Keep only the literals that carry a
        // real share of the parent's traffic (the `/api` and `/products` among a scanner's
        // junk). The share is taken without the busiest name, so one dominant name (`/api`)
        // doesn't raise the bar for the others; a name seen fewer than three times is a value.
        let busiest = self.literals.values().copied().max().unwrap_or(0);
        let keep_at = (self.hits - busiest).div_ceil(fold_after as u64).max(3);
        let mut dropped: Vec<String> = Vec::new();
        self.literals.retain(|name, hits| {
            let keep = *hits >= keep_at;
            if !keep {
                dropped.push(name.to_string());
            }
            keep
        });
        self.folded = true;
        dropped.sort();
        renamed.push(Renamed {
            parent: parent.to_string(),
            literals: dropped,
        });
        if self.literals.contains_key(seg) {
            seg
        } else {
            "{param}"
        }
    }
}

/// `template` with the segment after `parent` replaced by `{param}` when it is one of `literals`.
pub fn rename(template: &str, r: &Renamed) -> Option<String> {
    let rest = template.strip_prefix(r.parent.as_str())?;
    let rest = rest.strip_prefix('/')?;
    let (seg, tail) = rest.split_once('/').map_or((rest, None), |(s, t)| (s, Some(t)));
    if !r.literals.iter().any(|l| l == seg) {
        return None;
    }
    let mut out = format!("{}/{{param}}", r.parent);
    if let Some(t) = tail {
        out.push('/');
        out.push_str(t);
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifiers() {
        let yes = [
            "42",
            "0",
            "3f2504e0-4f89-11d3-9a0c-0305e82c3301",
            "deadbeefdeadbeef",
            "2024-01-31",
            "2024-01-31T12:00:00Z",
            "ann@example.com",
            "eyJhbGciOiJIUzI1NiJ9abc123",
            "01ARZ3NDEKTSV4RRFFQ69G5FAV",
            "SKU-0001",
        ];
        let no = [
            "orders",
            "SKU-01",
            "h264",
            "v2",
            "reservations",
            "blue-mug",
            "deadbeef",
            "",
            "api",
        ];
        for s in yes {
            assert!(is_identifier(s), "{s} is an identifier");
        }
        for s in no {
            assert!(!is_identifier(s), "{s} is a name");
        }
    }

    #[test]
    fn templates_of_paths() {
        let mut f = Folder::new(20, 100);
        let mut renamed = Vec::new();
        let cases = [
            ("/", "/"),
            ("/api/users/42/orders", "/api/users/{id}/orders"),
            ("/account/7", "/account/{id}"),
            ("/api/orders/3f2504e0-4f89-11d3-9a0c-0305e82c3301", "/api/orders/{id}"),
            ("/api/catalog/products/", "/api/catalog/products/"),
            ("/a/b/c/d/e/f/g/h/i/j/k/l/m/n", "/a/b/c/d/e/f/g/h/i/j/k/l/{rest}"),
        ];
        for (path, want) in cases {
            assert_eq!(f.template(path, &mut renamed), want, "{path}");
        }
        assert!(renamed.is_empty());
    }

    #[test]
    fn many_literals_under_one_parent_fold_into_a_parameter() {
        let mut f = Folder::new(5, 100);
        let mut renamed = Vec::new();
        for name in ["blue-mug", "red-mug", "green-mug", "tea-pot", "spoon"] {
            assert_eq!(
                f.template(&format!("/products/{name}"), &mut renamed),
                format!("/products/{name}")
            );
        }
        assert!(renamed.is_empty());
        assert_eq!(f.template("/products/fork", &mut renamed), "/products/{param}");
        assert_eq!(renamed.len(), 1);
        assert_eq!(renamed[0].parent, "/products");
        assert_eq!(renamed[0].literals.len(), 6);
        assert_eq!(f.template("/products/blue-mug", &mut renamed), "/products/{param}");
        assert_eq!(
            rename("/products/blue-mug/reviews", &renamed[0]).as_deref(),
            Some("/products/{param}/reviews")
        );
        assert_eq!(rename("/productsx/blue-mug", &renamed[0]), None);
    }

    #[test]
    fn a_scanner_does_not_fold_the_names_real_traffic_uses() {
        let mut f = Folder::new(20, 1000);
        let mut renamed = Vec::new();
        for _ in 0..100 {
            f.template("/api/orders/1", &mut renamed);
            f.template("/products/3", &mut renamed);
        }
        let junk = |i: usize| {
            format!(
                "/junk{}",
                (0..4)
                    .map(|k| (b'a' + (i / 26usize.pow(k) % 26) as u8) as char)
                    .collect::<String>()
            )
        };
        for i in 0..1000 {
            f.template(&junk(i), &mut renamed);
        }
        assert_eq!(f.template("/api/orders/9", &mut renamed), "/api/orders/{id}");
        assert_eq!(f.template("/products/9", &mut renamed), "/products/{id}");
        assert_eq!(f.template(&junk(5000), &mut renamed), "/{param}");
        assert!(f.positions() <= 1000);
    }

    #[test]
    fn a_dominant_name_does_not_push_the_smaller_real_ones_out() {
        let mut f = Folder::new(25, 1000);
        let mut renamed = Vec::new();
        for i in 0..1000 {
            f.template(&format!("/api/things/{i}"), &mut renamed);
        }
        for i in 0..30 {
            f.template(&format!("/products/{i}"), &mut renamed);
            f.template(&format!("/account/{i}"), &mut renamed);
        }
        let junk = |i: usize| {
            format!(
                "/x{}",
                (0..5)
                    .map(|k| (b'a' + (i / 26usize.pow(k) % 26) as u8) as char)
                    .collect::<String>()
            )
        };
        for i in 0..100 {
            f.template(&junk(i), &mut renamed);
        }
        assert_eq!(f.template("/products/7", &mut renamed), "/products/{id}");
        assert_eq!(f.template("/account/7", &mut renamed), "/account/{id}");
        assert_eq!(f.template("/api/things/7", &mut renamed), "/api/things/{id}");
        assert_eq!(f.template(&junk(500), &mut renamed), "/{param}");
    }

    #[test]
    fn capabilities() {
        use crate::rules::default_capability as capability;
        let cases = [
            ("/api/orders/{id}", "orders"),
            ("/api/v2/catalog/products", "catalog"),
            ("/v1/payments", "payments"),
            ("/products/{id}", "products"),
            ("/", "home"),
            ("/api/{id}", "(other)"),
        ];
        for (t, want) in cases {
            assert_eq!(capability(t), want, "{t}");
        }
    }
}
