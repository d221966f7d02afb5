//! Request path normalization: the one place that decides what path is matched and forwarded.
//!
//! Runs once per request, before matching. A path that is already normal (the common case)
//! is returned borrowed, without allocating.

use std::borrow::Cow;

/// Why a path can't be normalized safely. The request gets a 400 and reaches no upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    #[error("path must start with '/'")]
    NotAbsolute,
    #[error("encoded slash (%2F) in path")]
    EncodedSlash,
    #[error("backslash in path")]
    Backslash,
    #[error("NUL byte in path")]
    Nul,
    #[error("invalid percent-encoding in path")]
    BadPercent,
    #[error("'..' climbs above the root")]
    AboveRoot,
    #[error("';' in path (set allow_semicolons: true if the monolith needs path parameters)")]
    Semicolon,
    #[error("'.' or '..' segment with a ';' parameter")]
    DotSegmentParameter,
    #[error("percent-encoding that is not valid UTF-8 (overlong or truncated sequence)")]
    BadUtf8,
    #[error("look-alike of '/', '\\', '.' or '%' (e.g. fullwidth solidus)")]
    LookAlike,
}

impl PathError {
    /// A short machine-readable reason, used in the 400 body and in metrics.
    pub const ALL: [PathError; 10] = [
        PathError::NotAbsolute,
        PathError::EncodedSlash,
        PathError::Backslash,
        PathError::Nul,
        PathError::BadPercent,
        PathError::AboveRoot,
        PathError::Semicolon,
        PathError::DotSegmentParameter,
        PathError::BadUtf8,
        PathError::LookAlike,
    ];

    pub fn code(self) -> &'static str {
        match self {
            PathError::NotAbsolute => "not_absolute",
            PathError::EncodedSlash => "encoded_slash",
            PathError::Backslash => "backslash",
            PathError::Nul => "nul",
            PathError::BadPercent => "bad_percent_encoding",
            PathError::AboveRoot => "above_root",
            PathError::Semicolon => "semicolon",
            PathError::DotSegmentParameter => "dot_segment_parameter",
            PathError::BadUtf8 => "bad_utf8",
            PathError::LookAlike => "look_alike",
        }
    }
}

/// Normalize a request path (without its query string), refusing `;`:
/// decode percent-encoded unreserved characters, remove dot segments (RFC 3986 5.2.4)
/// and merge runs of slashes. See [`normalize_with`].
pub fn normalize(raw: &str) -> Result<Cow<'_, str>, PathError> {
    normalize_with(raw, false)
}

/// [`normalize`], with `;` path parameters kept as part of their segment when `allow_semicolons`
/// (a dot segment with a parameter, `/..;/`, is refused either way).
///
/// Every escape that stays is upper-cased; bytes outside printable ASCII are percent-encoded.
/// Escaped non-ASCII must be valid UTF-8 (no overlong forms) and must not be a look-alike of
/// `/`, `\`, `.` or `%` that a lenient backend could fold into one.
/// Idempotent: `normalize(normalize(p)) == normalize(p)`.
pub fn normalize_with(raw: &str, allow_semicolons: bool) -> Result<Cow<'_, str>, PathError> {
    let bytes = raw.as_bytes();
    if bytes.first() != Some(&b'/') {
        return Err(PathError::NotAbsolute);
    }
    if is_plain(bytes) {
        return Ok(Cow::Borrowed(raw));
    }
    if !allow_semicolons && bytes.contains(&b';') {
        return Err(PathError::Semicolon);
    }
    let decoded = decode_unreserved(bytes)?;
    Ok(Cow::Owned(remove_dots(&decoded)?))
}

/// True when nothing in the path needs work: no '%', '\\', ';', control or non-ASCII byte,
/// "//" or dot segment.
fn is_plain(bytes: &[u8]) -> bool {
    let mut prev = 0u8;
    for (i, &b) in bytes.iter().enumerate() {
        match b {
            b'%' | b'\\' | b';' | ..=b' ' | 0x7f.. => return false,
            b'/' if prev == b'/' => return false,
            b'.' if prev == b'/' => {
                // "/." starts a dot segment only if the segment is "." or "..".
                let rest = &bytes[i..];
                let seg_end = rest.iter().position(|&c| c == b'/').unwrap_or(rest.len());
                if &rest[..seg_end] == b"." || &rest[..seg_end] == b".." {
                    return false;
                }
            }
            _ => {}
        }
        prev = b;
    }
    true
}

fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Characters that a lenient backend (NFKC folding, Windows best-fit mapping) may turn into
/// `/`, `\\`, `.` or `%`, and so into a path the rules never saw.
const LOOK_ALIKES: &[char] = &[
    '\u{2215}', '\u{2044}', '\u{29F8}',
    '\u{FF0F}', // division slash, fraction slash, big solidus, fullwidth solidus
    '\u{2216}', '\u{29F9}', '\u{FE68}',
    '\u{FF3C}', // set minus, big reverse solidus, small/fullwidth reverse solidus
    '\u{2024}', '\u{2025}', '\u{2026}', '\u{FE52}',
    '\u{FF0E}', // dot leaders, ellipsis, small/fullwidth full stop
    '\u{FE6A}', '\u{FF05}', // small and fullwidth percent sign
];

/// The byte at `i`: a `%XX` escape (decoded, 3 bytes long) or a raw byte (1 byte long).
fn byte_at(bytes: &[u8], i: usize) -> Result<(u8, usize, bool), PathError> {
    if bytes[i] != b'%' {
        return Ok((bytes[i], 1, false));
    }
    match (
        bytes.get(i + 1).copied().and_then(hex),
        bytes.get(i + 2).copied().and_then(hex),
    ) {
        (Some(hi), Some(lo)) => Ok((hi << 4 | lo, 3, true)),
        _ => Err(PathError::BadPercent),
    }
}

/// Decode `%XX` for unreserved characters; keep every other escape, upper-cased, and escape
/// control and non-ASCII bytes. A run of non-ASCII bytes must be UTF-8 without look-alikes.
fn decode_unreserved(bytes: &[u8]) -> Result<String, PathError> {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    let push_escaped = |out: &mut String, v: u8| {
        out.push('%');
        out.push(HEX[(v >> 4) as usize] as char);
        out.push(HEX[(v & 0xf) as usize] as char);
    };
    let mut out = String::with_capacity(bytes.len());
    let mut run = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        let (v, len, escaped) = byte_at(bytes, i)?;
        match v {
            0 => return Err(PathError::Nul),
            b'/' if escaped => return Err(PathError::EncodedSlash),
            b'\\' => return Err(PathError::Backslash),
            0x80.. => {
                // Gather the whole run of non-ASCII bytes, escaped or raw, and check it as UTF-8.
                run.clear();
                while i < bytes.len() {
                    match byte_at(bytes, i)? {
                        (v @ 0x80.., len, _) => {
                            run.push(v);
                            i += len;
                        }
                        _ => break,
                    }
                }
                let text = std::str::from_utf8(&run).map_err(|_| PathError::BadUtf8)?;
                if text.chars().any(|c| LOOK_ALIKES.contains(&c)) {
                    return Err(PathError::LookAlike);
                }
                run.iter().for_each(|&v| push_escaped(&mut out, v));
                continue;
            }
            v if escaped && is_unreserved(v) => out.push(v as char),
            v if escaped || v <= b' ' || v == 0x7f => push_escaped(&mut out, v),
            v => out.push(v as char),
        }
        i += len;
    }
    Ok(out)
}

/// Remove "." and ".." segments and empty segments; keep a trailing slash.
fn remove_dots(path: &str) -> Result<String, PathError> {
    let mut segments: Vec<&str> = Vec::with_capacity(8);
    let mut trailing_slash = false;
    for seg in path.split('/').skip(1) {
        trailing_slash = false;
        if let Some((name, _)) = seg.split_once(';') {
            if name == "." || name == ".." {
                return Err(PathError::DotSegmentParameter);
            }
        }
        match seg {
            "" => trailing_slash = true,
            "." => trailing_slash = true,
            ".." => {
                if segments.pop().is_none() {
                    return Err(PathError::AboveRoot);
                }
                trailing_slash = true;
            }
            s => segments.push(s),
        }
    }
    let mut out = String::with_capacity(path.len());
    for s in &segments {
        out.push('/');
        out.push_str(s);
    }
    if out.is_empty() || trailing_slash {
        out.push('/');
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalizes() {
        let cases = [
            ("/", "/"),
            ("/api/orders/7", "/api/orders/7"),
            ("/api//orders///7", "/api/orders/7"),
            ("//", "/"),
            ("/a/./b", "/a/b"),
            ("/a/b/../c", "/a/c"),
            ("/a/b/..", "/a/"),
            ("/a/b/.", "/a/b/"),
            ("/a/", "/a/"),
            ("/a/.hidden", "/a/.hidden"),
            ("/a/..b", "/a/..b"),
            ("/%61pi/%7Euser", "/api/~user"),
            ("/api/%2e%2e/admin", "/admin"),
            ("/a/%2E/b", "/a/b"),
            ("/a%20b", "/a%20b"),
            ("/a%3fb", "/a%3Fb"),
            ("/caf%C3%A9", "/caf%C3%A9"),
            ("/caf%c3%a9", "/caf%C3%A9"),
            ("/caf\u{e9}", "/caf%C3%A9"),
            ("/a b", "/a%20b"),
            ("/a%09b", "/a%09b"),
            ("/%252e%252e/x", "/%252e%252e/x"),
        ];
        for (input, want) in cases {
            assert_eq!(normalize(input).as_deref(), Ok(want), "input {input:?}");
        }
    }

    #[test]
    fn semicolons_when_allowed() {
        assert_eq!(
            normalize_with("/a;jsessionid=1/b", true).as_deref(),
            Ok("/a;jsessionid=1/b")
        );
        assert_eq!(normalize_with("/a/..;x/b", true), Err(PathError::DotSegmentParameter));
        assert_eq!(normalize_with("/a/%2e;x/b", true), Err(PathError::DotSegmentParameter));
        assert_eq!(normalize_with("/a/..%3Bx", true).as_deref(), Ok("/a/..%3Bx"));
    }

    #[test]
    fn plain_paths_are_borrowed() {
        for p in ["/", "/api/orders/7", "/a/.hidden", "/a/b.c"] {
            assert!(matches!(normalize(p), Ok(Cow::Borrowed(_))), "{p}");
        }
        for p in ["/a//b", "/a/./b", "/a/%41"] {
            assert!(matches!(normalize(p), Ok(Cow::Owned(_))), "{p}");
        }
    }

    #[test]
    fn refuses() {
        let cases = [
            ("api", PathError::NotAbsolute),
            ("*", PathError::NotAbsolute),
            ("/a%2Fb", PathError::EncodedSlash),
            ("/a%2fb", PathError::EncodedSlash),
            ("/a%5Cb", PathError::Backslash),
            ("/a\\b", PathError::Backslash),
            ("/a%00b", PathError::Nul),
            ("/a%zz", PathError::BadPercent),
            ("/a%4", PathError::BadPercent),
            ("/a%", PathError::BadPercent),
            ("/..", PathError::AboveRoot),
            ("/a/../..", PathError::AboveRoot),
            ("/%2e%2e/etc/passwd", PathError::AboveRoot),
            ("/a;b", PathError::Semicolon),
            ("/api/..;/admin", PathError::Semicolon),
            ("/a/%C0%AE%C0%AE/b", PathError::BadUtf8),
            ("/a%C0%AFb", PathError::BadUtf8),
            ("/a%E0%80%AFb", PathError::BadUtf8),
            ("/a%C3", PathError::BadUtf8),
            ("/a%EF%BC%8Fb", PathError::LookAlike),
            ("/a/\u{ff0e}\u{ff0e}/b", PathError::LookAlike),
            ("/a%E2%88%95b", PathError::LookAlike),
        ];
        for (input, want) in cases {
            assert_eq!(normalize(input), Err(want), "input {input:?}");
        }
    }
}
