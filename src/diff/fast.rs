//! The fast path of a JSON comparison: two answers whose bytes differ only inside ignored values
//! are equal. One pass over the legacy answer's bytes proves it, and neither answer is parsed.
//!
//! Most copies agree with the monolith except in the fields a route ignores (a timestamp, a
//! request id). Then the two answers are the same bytes but for those values: the pass reads the
//! legacy answer's structure only as deep as some ignore pattern reaches, checks everything else
//! without tracking where it is, and skips each ignored value in both answers. Where the two
//! first differ between ignored values is found ahead, 32 bytes at a time: the pass gives up as
//! soon as it reads past that point outside an ignored value.
//!
//! Bytes that agree outside the ignored values agree under any `array_order` and
//! `numeric_tolerance` too: the multiset pairing meets each element's own place first.
//!
//! It says "equal" or "not proven", never "different": `diff::compare` runs the full structural
//! diff whenever this cannot prove equality. It reads a strict subset of JSON that simd-json (the
//! full diff's parser) also accepts, so it never calls equal two answers the full diff could not
//! parse. A `\u` escape, an exponent, an integer part over 18 digits, a control character in a
//! string, an escape in a key on the way to an ignored value, nesting deeper than 64, or a
//! scalar at the top level are all "not proven".

use super::{Ignored, Seg, Step};

/// Deeper values are left to the full diff.
const MAX_DEPTH: usize = 64;
/// Integer parts longer than this might not fit in 64 bits: left to the full diff.
const MAX_INT_DIGITS: usize = 18;

/// `true` only if `a` and `b` are the same JSON document outside the values that `ignore` and
/// `noise` cover, in the same spelling (the same keys in the same order, the same whitespace).
pub(super) fn equal_but_ignored(a: &[u8], b: &[u8], ignore: &[Vec<Seg>], noise: &[Vec<Seg>]) -> bool {
    let mut pass = Pass {
        a,
        b,
        i: 0,
        synced_a: 0,
        synced_b: 0,
        differs: first_difference(a, b),
        ignored: Ignored::new(ignore, noise),
    };
    pass.document().is_some()
}

struct Pass<'d, 'c> {
    a: &'d [u8],
    b: &'d [u8],
    /// Read up to here in `a`.
    i: usize,
    /// `a` from `synced_a` on lines up with `b` from `synced_b` on: the stretch since the last
    /// ignored value.
    synced_a: usize,
    synced_b: usize,
    /// Where in `a` that stretch first differs from `b` (found at SIMD speed when it starts).
    /// The pass gives up as soon as it reads past it outside an ignored value.
    differs: usize,
    ignored: Ignored<'c>,
}

impl<'d> Pass<'d, '_> {
    fn document(&mut self) -> Option<()> {
        self.i = after_whitespace(self.a, 0);
        if !matches!(self.a.get(self.i), Some(b'{' | b'[')) {
            return None;
        }
        self.value(0)?;
        if after_whitespace(self.a, self.i) != self.a.len() {
            return None;
        }
        // The last stretch, already compared ahead: no difference, and nothing more in `b`.
        let same_length = self.a.len() - self.synced_a == self.b.len() - self.synced_b;
        (self.differs == self.a.len() && same_length).then_some(())
    }

    /// The value at `self.i`, `depth` levels down.
    fn value(&mut self, depth: usize) -> Option<()> {
        if self.ignored.here() {
            // `b` holds the same bytes up to here, so its value starts at the same place.
            if self.differs < self.i {
                return None;
            }
            let j = self.synced_b + (self.i - self.synced_a);
            self.i = skip(self.a, self.i, depth, usize::MAX)?;
            self.synced_a = self.i;
            self.synced_b = skip(self.b, j, depth, usize::MAX)?;
            self.differs = self.i + first_difference(&self.a[self.i..], &self.b[self.synced_b..]);
            return Some(());
        }
        if self.ignored.none_below() {
            // No pattern reaches into this value: check it; it must hold no difference.
            self.i = skip(self.a, self.i, depth, self.differs)?;
            return (self.differs >= self.i).then_some(());
        }
        let a = self.a;
        match *a.get(self.i)? {
            b'{' => {
                self.i = after_whitespace(a, self.i + 1);
                if a.get(self.i) == Some(&b'}') {
                    self.i += 1;
                    return Some(());
                }
                loop {
                    let end = string(a, self.i)?;
                    // The path holds the key as written: one with an escape is left to the full diff.
                    let key = std::str::from_utf8(&a[self.i + 1..end - 1])
                        .ok()
                        .filter(|k| !k.contains('\\'))?;
                    self.i = after_whitespace(a, end);
                    if a.get(self.i) != Some(&b':') {
                        return None;
                    }
                    self.i = after_whitespace(a, self.i + 1);
                    self.nested(depth, Step::Key(key))?;
                    if !self.next(b'}')? {
                        return Some(());
                    }
                }
            }
            b'[' => {
                self.i = after_whitespace(a, self.i + 1);
                if a.get(self.i) == Some(&b']') {
                    self.i += 1;
                    return Some(());
                }
                let mut index = 0;
                loop {
                    self.nested(depth, Step::Index(index))?;
                    if !self.next(b']')? {
                        return Some(());
                    }
                    index += 1;
                }
            }
            _ => {
                self.i = scalar(a, self.i)?;
                (self.differs >= self.i).then_some(())
            }
        }
    }

    fn nested(&mut self, depth: usize, step: Step) -> Option<()> {
        if depth >= MAX_DEPTH {
            return None;
        }
        self.ignored.down(step);
        let done = self.value(depth + 1);
        self.ignored.up();
        done
    }

    /// After a member or an element: `Some(true)` at a comma (and moves past it), `Some(false)`
    /// at `close` (and moves past it), `None` at anything else.
    fn next(&mut self, close: u8) -> Option<bool> {
        self.i = after_whitespace(self.a, self.i);
        match *self.a.get(self.i)? {
            b',' => {
                self.i = after_whitespace(self.a, self.i + 1);
                Some(true)
            }
            c if c == close => {
                self.i += 1;
                Some(false)
            }
            _ => None,
        }
    }
}

/// The first offset at which `a` and `b` differ (the shorter one's length if one is the other's
/// start, `a.len()` if they are equal).
fn first_difference(a: &[u8], b: &[u8]) -> usize {
    let n = a.len().min(b.len());
    let (a, b) = (&a[..n], &b[..n]);
    // Whole blocks first: comparing 32 bytes at once is a few vector instructions.
    let same = a
        .chunks_exact(32)
        .zip(b.chunks_exact(32))
        .take_while(|(x, y)| x == y)
        .count()
        * 32;
    same + a[same..]
        .iter()
        .zip(&b[same..])
        .position(|(x, y)| x != y)
        .unwrap_or(n - same)
}

fn after_whitespace(doc: &[u8], mut i: usize) -> usize {
    while matches!(doc.get(i), Some(b' ' | b'\t' | b'\n' | b'\r')) {
        i += 1;
    }
    i
}

/// The end of the value at `i`, `depth` levels down, if it is valid (in the subset) and ends by
/// `limit` (it gives up on a longer one as soon as it has read that far).
fn skip(doc: &[u8], i: usize, depth: usize, limit: usize) -> Option<usize> {
    let close = match *doc.get(i)? {
        b'{' => b'}',
        b'[' => b']',
        _ => return scalar(doc, i),
    };
    if depth >= MAX_DEPTH {
        return None;
    }
    let mut i = after_whitespace(doc, i + 1);
    if doc.get(i) == Some(&close) {
        return Some(i + 1);
    }
    loop {
        if close == b'}' {
            i = after_whitespace(doc, string(doc, i)?);
            if doc.get(i) != Some(&b':') {
                return None;
            }
            i = after_whitespace(doc, i + 1);
        }
        i = after_whitespace(doc, skip(doc, i, depth + 1, limit)?);
        if i > limit {
            return None;
        }
        match *doc.get(i)? {
            b',' => i = after_whitespace(doc, i + 1),
            c if c == close => return Some(i + 1),
            _ => return None,
        }
    }
}

/// The end of the string, number, `true`, `false` or `null` at `i`.
fn scalar(doc: &[u8], i: usize) -> Option<usize> {
    let literal = |word: &[u8]| {
        doc.get(i..i + word.len())
            .filter(|w| *w == word)
            .map(|_| i + word.len())
    };
    match *doc.get(i)? {
        b'"' => string(doc, i),
        b't' => literal(b"true"),
        b'f' => literal(b"false"),
        b'n' => literal(b"null"),
        b'-' | b'0'..=b'9' => number(doc, i),
        _ => None,
    }
}

/// The bytes a string's plain run stops at: the quote, the backslash, control characters, and
/// the first byte of a character outside ASCII.
const STOPS: [bool; 256] = {
    let mut stops = [false; 256];
    let mut c = 0;
    while c < 256 {
        stops[c] = c < 0x20 || c == b'"' as usize || c == b'\\' as usize || c >= 0x80;
        c += 1;
    }
    stops
};

/// Where the run of plain string bytes from `at` ends: at the first quote, backslash, control
/// character or byte outside ASCII. Eight bytes at a time: `memchr2` for the quote and backslash
/// plus a pass for the rest took 9.3 µs on `cargo bench --bench diff`'s 10 KiB answers, a table
/// lookup a byte 7.6 µs.
fn plain_run(doc: &[u8], mut at: usize) -> Option<usize> {
    const ONES: u64 = u64::from_ne_bytes([1; 8]);
    const HIGH: u64 = u64::from_ne_bytes([0x80; 8]);
    // The high bit of each byte of `y` that is zero; exact for the lowest one, which is all
    // that is read (a borrow can only flag bytes above a real one).
    let zero = |y: u64| y.wrapping_sub(ONES) & !y & HIGH;
    while let Some(block) = doc.get(at..at + 8) {
        let x = u64::from_le_bytes(block.try_into().ok()?);
        let below_space = x.wrapping_sub(ONES * 0x20) & !x & HIGH;
        let stops = zero(x ^ (ONES * u64::from(b'"'))) | zero(x ^ (ONES * u64::from(b'\\'))) | below_space | x & HIGH;
        if stops != 0 {
            return Some(at + stops.trailing_zeros() as usize / 8);
        }
        at += 8;
    }
    Some(at + doc.get(at..)?.iter().position(|&c| STOPS[usize::from(c)])?)
}

/// The end of the string at `i` (past its closing quote): valid UTF-8, no control characters,
/// and only the short escapes (`\"`, `\\`, `\/`, `\b`, `\f`, `\n`, `\r`, `\t`).
fn string(doc: &[u8], i: usize) -> Option<usize> {
    if doc.get(i) != Some(&b'"') {
        return None;
    }
    let mut at = i + 1;
    loop {
        at = plain_run(doc, at)?;
        match doc[at] {
            b'"' => return Some(at + 1),
            b'\\' => match doc.get(at + 1)? {
                b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't' => at += 2,
                _ => return None,
            },
            lead @ 0x80.. => {
                // One character of two to four bytes, checked whole.
                let len = match lead {
                    0xC2..=0xDF => 2,
                    0xE0..=0xEF => 3,
                    0xF0..=0xF4 => 4,
                    _ => return None,
                };
                std::str::from_utf8(doc.get(at..at + len)?).ok()?;
                at += len;
            }
            // A control character.
            _ => return None,
        }
    }
}

/// The end of the number at `i`: `-?(0|[1-9][0-9]*)(\.[0-9]+)?` with an integer part of at most
/// `MAX_INT_DIGITS` digits.
fn number(doc: &[u8], i: usize) -> Option<usize> {
    let digits = |from: usize| from + doc[from..].iter().take_while(|c| c.is_ascii_digit()).count();
    let start = i + usize::from(doc.get(i) == Some(&b'-'));
    let mut end = match doc.get(start)? {
        b'0' => start + 1,
        b'1'..=b'9' => digits(start),
        _ => return None,
    };
    if end - start > MAX_INT_DIGITS {
        return None;
    }
    if doc.get(end) == Some(&b'.') {
        let fraction = digits(end + 1);
        if fraction == end + 1 {
            return None;
        }
        end = fraction;
    }
    // An exponent is not read: whoever reads on finds an `e` where a `,`, a bracket or the end
    // belongs, and gives up.
    Some(end)
}

#[cfg(test)]
mod tests {
    use super::super::{parse_path, structural, ArrayOrder, Compare};
    use super::*;
    use serde_json::Value;

    fn patterns(paths: &[&str]) -> Vec<Vec<Seg>> {
        paths.iter().map(|p| parse_path(p).unwrap()).collect()
    }

    fn fast(a: &str, b: &str, ignore: &[&str]) -> bool {
        equal_but_ignored(a.as_bytes(), b.as_bytes(), &patterns(ignore), &[])
    }

    #[test]
    fn proves_answers_equal_but_in_ignored_values() {
        let cases: [(&str, &str, &[&str]); 8] = [
            (r#"{"id":1,"at":"b1"}"#, r#"{"id":1,"at":"b22"}"#, &["$.at"]),
            (r#"{"at":{"x":[1,2]},"id":1}"#, r#"{"at":null,"id":1}"#, &["$.at"]),
            (
                r#"[{"rid":"x","v":1},{"rid":"yy","v":2}]"#,
                r#"[{"rid":"zzz","v":1},{"rid":"","v":2}]"#,
                &["$[*].rid"],
            ),
            (
                r#"{"a":{"b":{"c":1,"d":2}}}"#,
                r#"{"a":{"b":{"c":9,"d":2}}}"#,
                &["$.a.b.c"],
            ),
            (r#"{"list":[1,2,3]}"#, r#"{"list":[1,7,3]}"#, &["$.list[1]"]),
            (" {\"a\" : 1 ,\n\"t\": 2}\n", " {\"a\" : 1 ,\n\"t\": 33}\n", &["$.t"]),
            (
                r#"{"s":"é \"q\" \\ \n","t":1}"#,
                r#"{"s":"é \"q\" \\ \n","t":2}"#,
                &["$.t"],
            ),
            (r#"{"a":1}"#, r#"{"a":2}"#, &["$"]),
        ];
        for (a, b, ignore) in cases {
            assert!(fast(a, b, ignore), "{a} vs {b}, ignoring {ignore:?}");
        }
    }

    #[test]
    fn anything_else_is_not_proven() {
        let cases: [(&str, &str, &[&str]); 26] = [
            // A difference outside the ignored values.
            (r#"{"id":1,"at":"b1"}"#, r#"{"id":2,"at":"b1"}"#, &["$.at"]),
            (
                r#"{"s":"a123456789012345678901234567890123456789","t":1}"#,
                r#"{"s":"b123456789012345678901234567890123456789","t":2}"#,
                &["$.t"],
            ),
            (r#"{"id":1,"at":1}"#, r#"{"id":12,"at":1}"#, &["$.at"]),
            (r#"{"a":[1,2],"at":1}"#, r#"{"a":[1,2,3],"at":1}"#, &["$.at"]),
            // The same document spelled another way: the full diff decides.
            (r#"{"a":1,"b":2}"#, r#"{"b":2,"a":1}"#, &[]),
            (r#"{"a":1,"t":2}"#, r#"{"a": 1,"t":2}"#, &["$.t"]),
            (r#"{"a":1.0,"t":1}"#, r#"{"a":1,"t":2}"#, &["$.t"]),
            (r#"{"t":1}"#, r#"{"t":2} "#, &["$.t"]),
            (r#"{"a":1}"#, r#"{"a":1} "#, &["$.t"]),
            // Outside the subset read here.
            (r#"{"a":"\u00e9","t":1}"#, r#"{"a":"\u00e9","t":2}"#, &["$.t"]),
            (r#"{"a":1e3,"t":1}"#, r#"{"a":1e3,"t":2}"#, &["$.t"]),
            (
                r#"{"a":1234567890123456789,"t":1}"#,
                r#"{"a":1234567890123456789,"t":2}"#,
                &["$.t"],
            ),
            ("{\"a\":\"\t\",\"t\":1}", "{\"a\":\"\t\",\"t\":2}", &["$.t"]),
            (
                "{\"a\":\"0123456789\t\",\"t\":1}",
                "{\"a\":\"0123456789\t\",\"t\":2}",
                &["$.t"],
            ),
            (
                r#"{"a":"0123456789\x","t":1}"#,
                r#"{"a":"0123456789\x","t":2}"#,
                &["$.t"],
            ),
            (r#"{"k\"":{"t":1}}"#, r#"{"k\"":{"t":2}}"#, &["$.*"]),
            (r#"1"#, r#"2"#, &["$"]),
            // Not JSON at all, or not only JSON.
            (r#"{"a":01,"t":1}"#, r#"{"a":01,"t":2}"#, &["$.t"]),
            (r#"{"a":1,"t":1}x"#, r#"{"a":1,"t":2}x"#, &["$.t"]),
            (r#"{"a":tru,"t":1}"#, r#"{"a":tru,"t":2}"#, &["$.t"]),
            (r#"{"t":1,"a":[1,}"#, r#"{"t":2,"a":[1,}"#, &["$.t"]),
            (r#"{"a";1,"t":1}"#, r#"{"a";1,"t":2}"#, &["$.t"]),
            (r#"{"x":"#, r#"{"x":"#, &["$.x.y"]),
            (r#"{"x":{"y":1"#, r#"{"x":{"y":2"#, &["$.x.y"]),
            (r#"{"t":1,"x":[1,"#, r#"{"t":2,"x":[1,"#, &["$.t"]),
            (r#"{"x":{"a";1},"t":1}"#, r#"{"x":{"a";1},"t":2}"#, &["$.t"]),
        ];
        for (a, b, ignore) in cases {
            assert!(!fast(a, b, ignore), "{a} vs {b}, ignoring {ignore:?}");
        }
        let deep = |t: u8| format!("{}{{\"t\":{t}}}{}", "[".repeat(70), "]".repeat(70));
        assert!(!fast(&deep(1), &deep(2), &["$.t"]));
        for text in [
            &b"\xff"[..],
            b"0123456789\xff",
            b"0123456789\xc3",
            b"01234567\xed\xa0\x80",
        ] {
            let invalid_utf8 = |t: u8| [&b"{\"a\":\""[..], text, b"\",\"t\":", &[b'0' + t], b"}"].concat();
            assert!(!equal_but_ignored(
                &invalid_utf8(1),
                &invalid_utf8(2),
                &patterns(&["$.t"]),
                &[]
            ));
        }
        // Characters of two, three and four bytes, in the eight-byte blocks and after them.
        let text = "{\"a\":\"0123456789é€𝄞é\",\"b\":\"é€𝄞\",\"t\":1}";
        assert!(fast(text, &text.replace(":1}", ":22}"), &["$.t"]));
    }

    fn json_value() -> impl proptest::strategy::Strategy<Value = Value> {
        use proptest::prelude::*;
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::from),
            (-3i64..9).prop_map(Value::from),
            prop_oneof![Just(0.5), Just(1.0), Just(-2.25)].prop_map(Value::from),
            "[ab\"\\\\\n\u{e9}]{0,3}".prop_map(Value::from),
        ];
        leaf.prop_recursive(3, 24, 3, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..3).prop_map(Value::Array),
                prop::collection::vec((prop_oneof![Just("a"), Just("b"), Just("at")], inner), 0..3)
                    .prop_map(|kv| Value::Object(kv.into_iter().map(|(k, v)| (k.to_string(), v)).collect())),
            ]
        })
    }

    /// Change the `n`th leaf (in document order): a string or a number to another of the same
    /// length (when it has one), a boolean flipped, null to 0.
    fn tweak_leaf(v: &mut Value, n: &mut usize) -> bool {
        match v {
            Value::Array(items) => items.iter_mut().any(|i| tweak_leaf(i, n)),
            Value::Object(m) => m.values_mut().any(|i| tweak_leaf(i, n)),
            leaf if *n == 0 => {
                *leaf = match leaf.take() {
                    Value::String(s) if s.starts_with('a') => Value::String(s.replacen('a', "b", 1)),
                    Value::String(s) => Value::String(s + "a"),
                    Value::Number(x) if x.as_i64().is_some_and(|i| (0..9).contains(&i)) => {
                        (x.as_i64().unwrap() + 1).into()
                    }
                    Value::Number(x) => (x.as_f64().unwrap() + 1.0).into(),
                    Value::Bool(b) => (!b).into(),
                    _ => 0.into(),
                };
                true
            }
            _ => {
                *n -= 1;
                false
            }
        }
    }

    fn full_diff_equal(c: &Compare, a: &str, b: &str) -> bool {
        let mut out = Vec::new();
        structural(c, &[], a.as_bytes(), b.as_bytes(), &mut out) && out.is_empty()
    }

    proptest::proptest! {
        #![proptest_config(proptest::test_runner::Config { cases: 2000, ..Default::default() })]

        /// Sound: whatever the fast path proves equal, the full diff finds equal, for unrelated
        /// documents and for a document against itself with one leaf changed, compact or
        /// pretty-printed, under several ignore sets and both array orders. And it proves the
        /// case it is for: the same document with only an ignored value changed.
        #[test]
        fn agrees_with_the_full_diff(
            a in json_value(),
            b in json_value(),
            to in json_value(),
            n in 0usize..64,
            pretty: bool,
            any_order: bool,
        ) {
            let ignore_sets: [&[&str]; 4] = [&["$.at"], &["$.at", "$[*].at", "$.a[*].at", "$.b.at"], &["$.a[1]"], &[]];
            let text = |v: &Value| if pretty { serde_json::to_string_pretty(v).unwrap() } else { v.to_string() };
            let mut one_changed = a.clone();
            tweak_leaf(&mut one_changed, &mut n.clone());
            for paths in ignore_sets {
                let c = Compare {
                    ignore: patterns(paths),
                    array_order: if any_order { ArrayOrder::Any } else { ArrayOrder::Strict },
                    ..Compare::default()
                };
                for other in [&b, &one_changed] {
                    let (x, y) = (text(&a), text(other));
                    if equal_but_ignored(x.as_bytes(), y.as_bytes(), &c.ignore, &[]) {
                        proptest::prop_assert!(full_diff_equal(&c, &x, &y), "{} vs {} under {:?}", x, y, paths);
                    }
                }
            }
            // Only the value at "at" changed (serde_json keeps keys sorted: the same order).
            if let Value::Object(m) = &a {
                let mut with_at = m.clone();
                with_at.entry("at").or_insert(Value::Null);
                let mut changed = m.clone();
                changed.insert("at".into(), to);
                let (x, y) = (text(&Value::Object(with_at)), text(&Value::Object(changed)));
                proptest::prop_assert!(fast(&x, &y, &["$.at"]), "{} vs {}", x, y);
            }
        }
    }

    proptest::proptest! {
        #![proptest_config(proptest::test_runner::Config { cases: 3000, ..Default::default() })]

        /// Broken JSON never panics, and nothing broken is proven equal that the full diff would
        /// not call equal: a document cut short, or with one byte replaced, on either side or both.
        #[test]
        fn broken_documents_are_never_proven(
            a in json_value(),
            cut_a in proptest::option::of(0usize..400),
            cut_b in proptest::option::of(0usize..400),
            at in 0usize..400,
            byte in proptest::sample::select(b"{}[],:\"\\ 0-.etx\xff\x01".to_vec()),
        ) {
            let c = Compare { ignore: patterns(&["$.at", "$[*].at", "$.a.b"]), ..Compare::default() };
            let x = serde_json::to_string_pretty(&a).unwrap().into_bytes();
            let mut y = x.clone();
            if !y.is_empty() {
                let at = at % y.len();
                y[at] = byte;
            }
            let cut = |mut v: Vec<u8>, n: Option<usize>| {
                if let Some(n) = n {
                    v.truncate(n);
                }
                v
            };
            let (x, y) = (cut(x, cut_a), cut(y, cut_b));
            for (p, q) in [(&x, &y), (&y, &x), (&y, &y)] {
                if equal_but_ignored(p, q, &c.ignore, &[]) {
                    let mut out = Vec::new();
                    proptest::prop_assert!(
                        structural(&c, &[], p, q, &mut out) && out.is_empty(),
                        "{} vs {}", String::from_utf8_lossy(p), String::from_utf8_lossy(q)
                    );
                }
            }
        }
    }
}
