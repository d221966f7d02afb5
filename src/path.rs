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
}

impl PathError {
    /// A short machine-readable reason, used in the 400 body and in metrics.
    pub fn code(self) -> &'static str {
        match self {
            PathError::NotAbsolute => "not_absolute",
            PathError::EncodedSlash => "encoded_slash",
            PathError::Backslash => "backslash",
            PathError::Nul => "nul",
            PathError::BadPercent => "bad_percent_encoding",
            PathError::AboveRoot => "above_root",
        }
    }
}

/// Normalize a request path (without its query string):
/// decode percent-encoded unreserved characters, remove dot segments (RFC 3986 5.2.4)
/// and merge runs of slashes.
pub fn normalize(raw: &str) -> Result<Cow<'_, str>, PathError> {
    let bytes = raw.as_bytes();
    if bytes.first() != Some(&b'/') {
        return Err(PathError::NotAbsolute);
    }
    if is_plain(bytes) {
        return Ok(Cow::Borrowed(raw));
    }
    let decoded = decode_unreserved(bytes)?;
    Ok(Cow::Owned(remove_dots(&decoded)?))
}

/// True when nothing in the path needs work: no '%', '\', NUL, "//" or dot segment.
fn is_plain(bytes: &[u8]) -> bool {
    let mut prev = 0u8;
    for (i, &b) in bytes.iter().enumerate() {
        match b {
            b'%' | b'\\' | 0 => return false,
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

/// Decode `%XX` for unreserved characters; keep every other escape, upper-cased.
fn decode_unreserved(bytes: &[u8]) -> Result<String, PathError> {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    let mut out = String::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        match b {
            b'%' => {
                let (hi, lo) = match (
                    bytes.get(i + 1).copied().and_then(hex),
                    bytes.get(i + 2).copied().and_then(hex),
                ) {
                    (Some(hi), Some(lo)) => (hi, lo),
                    _ => return Err(PathError::BadPercent),
                };
                let v = hi << 4 | lo;
                match v {
                    0 => return Err(PathError::Nul),
                    b'/' => return Err(PathError::EncodedSlash),
                    b'\\' => return Err(PathError::Backslash),
                    v if is_unreserved(v) => out.push(v as char),
                    v => {
                        out.push('%');
                        out.push(HEX[(v >> 4) as usize] as char);
                        out.push(HEX[(v & 0xf) as usize] as char);
                    }
                }
                i += 3;
            }
            b'\\' => return Err(PathError::Backslash),
            0 => return Err(PathError::Nul),
            _ => {
                // Non-ASCII bytes can't occur in a parsed URI; keep anything else as is.
                out.push(b as char);
                i += 1;
            }
        }
    }
    Ok(out)
}

/// Remove "." and ".." segments and empty segments; keep a trailing slash.
fn remove_dots(path: &str) -> Result<String, PathError> {
    let mut segments: Vec<&str> = Vec::with_capacity(8);
    let mut trailing_slash = false;
    for seg in path.split('/').skip(1) {
        trailing_slash = false;
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
        ];
        for (input, want) in cases {
            assert_eq!(normalize(input).as_deref(), Ok(want), "input {input:?}");
        }
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
        ];
        for (input, want) in cases {
            assert_eq!(normalize(input), Err(want), "input {input:?}");
        }
    }
}
