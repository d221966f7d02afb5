//! A route's request conditions beyond path and method (headers, cookies, query parameters and
//! host), compiled once at load; and the request as route lookup sees it.
//!
//! Values are compared the way the application behind would read them, so that an encoded
//! variant can't slip past a rule: cookie values without their quotes and with `%XX` decoded,
//! query names and values form-decoded, hosts without case, port or trailing dot.

use std::borrow::Cow;

use crate::config::Spanned;
use http::header::{COOKIE, HOST};
use http::{HeaderMap, HeaderName, HeaderValue, Method};
use regex::bytes::{Regex, RegexBuilder};

use super::compile::Compiler;
use crate::config::{MatchFile, RegexFile, WantFile};

/// A pattern may be this long, and compile to at most `REGEX_SIZE_LIMIT` bytes of program: a
/// rules file can't make matching slow or large.
const REGEX_MAX_LEN: usize = 1024;
const REGEX_SIZE_LIMIT: usize = 256 * 1024;

/// A request as route lookup sees it.
#[derive(Clone, Copy)]
pub struct Request<'a> {
    pub method: &'a Method,
    /// Normalized (`crate::path::normalize`).
    pub path: &'a str,
    pub query: Option<&'a str>,
    pub headers: &'a HeaderMap,
    /// The URI's authority (HTTP/2's `:authority`, or an absolute-form target), which wins
    /// over the `Host` header.
    pub authority: Option<&'a str>,
}

impl<'a> Request<'a> {
    /// A request with no query and no authority.
    pub fn new(method: &'a Method, path: &'a str, headers: &'a HeaderMap) -> Request<'a> {
        Request {
            method,
            path,
            query: None,
            headers,
            authority: None,
        }
    }

    /// The host, without port or trailing dot (case is left as sent).
    pub fn host(&self) -> Option<&'a str> {
        let raw = match self.authority {
            Some(a) => a,
            None => self.headers.get(HOST)?.to_str().ok()?,
        };
        let raw = raw.rsplit_once('@').map_or(raw, |(_, h)| h);
        let host = if raw.starts_with('[') {
            raw.find(']').map_or(raw, |end| &raw[..=end])
        } else {
            raw.split_once(':').map_or(raw, |(h, _)| h)
        };
        Some(host.trim_end_matches('.'))
    }
}

/// What a header, cookie or query parameter must be.
#[derive(Debug, Clone)]
pub enum Want {
    Present,
    Exact(Box<[u8]>),
    Regex(Regex),
}

impl Want {
    fn accepts(&self, value: &[u8]) -> bool {
        match self {
            Want::Present => true,
            Want::Exact(v) => **v == *value,
            Want::Regex(r) => r.is_match(value),
        }
    }

    /// As `explain` and the duplicate check show it.
    pub fn describe(&self) -> String {
        match self {
            Want::Present => "present".into(),
            Want::Exact(v) => format!("= {}", String::from_utf8_lossy(v)),
            Want::Regex(r) => format!("~ {}", r.as_str()),
        }
    }
}

impl PartialEq for Want {
    fn eq(&self, other: &Want) -> bool {
        self.describe() == other.describe()
    }
}

/// Where a condition looks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Field {
    Header(HeaderName),
    Cookie(Box<str>),
    Query(Box<str>),
}

/// One header, cookie or query condition of a route.
#[derive(Debug, Clone, PartialEq)]
pub struct Condition {
    pub field: Field,
    pub want: Want,
}

impl Condition {
    /// Any one value of the field will do (a header or parameter may come more than once).
    pub fn accepts(&self, req: &Request) -> bool {
        match &self.field {
            Field::Header(name) => req
                .headers
                .get_all(name)
                .iter()
                .any(|v| self.want.accepts(v.as_bytes())),
            Field::Cookie(name) => req.headers.get_all(COOKIE).iter().any(|h| {
                cookies(h.as_bytes()).any(|(k, v)| k == name.as_bytes() && self.want.accepts(&cookie_value(v)))
            }),
            Field::Query(name) => req.query.is_some_and(|q| {
                q.split('&')
                    .filter(|p| !p.is_empty())
                    .map(|p| p.split_once('=').unwrap_or((p, "")))
                    .any(|(k, v)| *form_decode(k) == *name.as_bytes() && self.want.accepts(&form_decode(v)))
            }),
        }
    }

    pub fn describe(&self) -> String {
        let (kind, name) = match &self.field {
            Field::Header(n) => ("header", n.as_str()),
            Field::Cookie(n) => ("cookie", &**n),
            Field::Query(n) => ("query", &**n),
        };
        format!("{kind} {name} {}", self.want.describe())
    }
}

/// `match.host`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum HostMatch {
    /// Lower case, no trailing dot.
    Exact(Box<str>),
    /// `*.shop.example`, kept as `.shop.example`: any name under it, not the name itself.
    Under(Box<str>),
}

impl HostMatch {
    pub fn accepts(&self, host: &str) -> bool {
        match self {
            HostMatch::Exact(h) => host.eq_ignore_ascii_case(h),
            HostMatch::Under(suffix) => {
                host.len() > suffix.len() && {
                    let at = host.len() - suffix.len();
                    host.is_char_boundary(at) && host[at..].eq_ignore_ascii_case(suffix)
                }
            }
        }
    }

    pub fn describe(&self) -> String {
        match self {
            HostMatch::Exact(h) => format!("host {h}"),
            HostMatch::Under(s) => format!("host *{s}"),
        }
    }
}

/// The `name=value` pairs of one `Cookie` header.
pub(super) fn cookies(header: &[u8]) -> impl Iterator<Item = (&[u8], &[u8])> {
    header.split(|&b| b == b';').filter_map(|pair| {
        let pair = pair.trim_ascii();
        let eq = pair.iter().position(|&b| b == b'=')?;
        Some((pair[..eq].trim_ascii(), pair[eq + 1..].trim_ascii()))
    })
}

/// A cookie value as applications read it: without surrounding quotes, `%XX` decoded.
fn cookie_value(v: &[u8]) -> Cow<'_, [u8]> {
    let v = match v {
        [b'"', inner @ .., b'"'] => inner,
        _ => v,
    };
    percent_decode(v, false)
}

/// A query name or value as applications read it: `+` is a space, `%XX` decoded.
fn form_decode(v: &str) -> Cow<'_, [u8]> {
    percent_decode(v.as_bytes(), true)
}

/// `%XX` decoded (a malformed escape is kept as written); borrowed when there is nothing to do.
fn percent_decode(v: &[u8], plus_is_space: bool) -> Cow<'_, [u8]> {
    if !v.iter().any(|&b| b == b'%' || (plus_is_space && b == b'+')) {
        return Cow::Borrowed(v);
    }
    let hex = |b: u8| (b as char).to_digit(16).map(|d| d as u8);
    let mut out = Vec::with_capacity(v.len());
    let mut i = 0;
    while i < v.len() {
        match v[i] {
            b'%' if i + 2 < v.len() => match (hex(v[i + 1]), hex(v[i + 2])) {
                (Some(a), Some(b)) => {
                    out.push((a << 4) | b);
                    i += 3;
                    continue;
                }
                _ => out.push(b'%'),
            },
            b'+' if plus_is_space => out.push(b' '),
            b => out.push(b),
        }
        i += 1;
    }
    Cow::Owned(out)
}

impl Compiler<'_> {
    /// `match.headers`, `match.cookies`, `match.query` and `match.host`.
    pub(super) fn conditions(&mut self, m: &MatchFile, route: Option<&str>) -> (Vec<Condition>, Option<HostMatch>) {
        let mut out = Vec::new();
        for (name, want) in m.headers.iter().flatten() {
            let Ok(hn) = HeaderName::from_bytes(name.as_bytes()) else {
                self.err(&want.referenced, route, format!("bad header name \"{name}\""));
                continue;
            };
            if let Some(w) = self.want(want, route, "match.headers", name) {
                if let Want::Exact(v) = &w {
                    if HeaderValue::from_bytes(v).is_err() {
                        self.err(&want.referenced, route, format!("bad value for header \"{name}\""));
                        continue;
                    }
                }
                out.push(Condition {
                    field: Field::Header(hn),
                    want: w,
                });
            }
        }
        for (name, want) in m.cookies.iter().flatten() {
            let token = !name.is_empty()
                && name
                    .bytes()
                    .all(|b| b.is_ascii_graphic() && !b"()<>@,;:\\\"/[]?={}".contains(&b));
            if !token {
                self.err(&want.referenced, route, format!("bad cookie name \"{name}\""));
                continue;
            }
            if let Some(w) = self.want(want, route, "match.cookies", name) {
                out.push(Condition {
                    field: Field::Cookie(name.as_str().into()),
                    want: w,
                });
            }
        }
        for (name, want) in m.query.iter().flatten() {
            if name.is_empty() {
                self.err(&want.referenced, route, "match.query: a parameter needs a name".into());
                continue;
            }
            if let Some(w) = self.want(want, route, "match.query", name) {
                out.push(Condition {
                    field: Field::Query(name.as_str().into()),
                    want: w,
                });
            }
        }
        let host = m.host.as_ref().and_then(|h| self.host(h, route));
        (out, host)
    }

    fn want(&mut self, w: &Spanned<WantFile>, route: Option<&str>, what: &str, name: &str) -> Option<Want> {
        match &w.value {
            WantFile::Present(true) => Some(Want::Present),
            WantFile::Present(false) => {
                self.err(
                    &w.referenced,
                    route,
                    format!("{what}.{name}: false matches nothing; use true for \"present\", or remove the key"),
                );
                None
            }
            // The keyword of the first release, still understood for headers.
            WantFile::Exact(v) if what == "match.headers" && v == "present" => Some(Want::Present),
            WantFile::Exact(v) => Some(Want::Exact(v.as_bytes().into())),
            WantFile::Number(n) => Some(Want::Exact(n.to_string().into_bytes().into())),
            WantFile::Regex(RegexFile { regex }) => {
                if regex.len() > REGEX_MAX_LEN {
                    self.err(
                        &w.referenced,
                        route,
                        format!("{what}.{name}: the regex is longer than {REGEX_MAX_LEN} characters"),
                    );
                    return None;
                }
                match RegexBuilder::new(regex).size_limit(REGEX_SIZE_LIMIT).build() {
                    Ok(r) => Some(Want::Regex(r)),
                    Err(e) => {
                        // The last line says what is wrong (the ones above draw the pattern).
                        let e = e.to_string();
                        let e = e.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or_default();
                        let e = e.trim().trim_start_matches("error: ");
                        self.err(&w.referenced, route, format!("{what}.{name}: bad regex: {e}"));
                        None
                    }
                }
            }
        }
    }

    fn host(&mut self, h: &Spanned<String>, route: Option<&str>) -> Option<HostMatch> {
        let v = h.value.trim().trim_end_matches('.').to_ascii_lowercase();
        let (under, name) = match v.strip_prefix("*.") {
            Some(rest) => (true, rest),
            None => (false, v.as_str()),
        };
        let ok = !name.is_empty()
            && name.split('.').all(|label| {
                !label.is_empty()
                    && label
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            });
        if !ok {
            self.err(
                &h.referenced,
                route,
                format!(
                    "match.host \"{}\" must be a host name (shop.example) or a wildcard of one (*.shop.example), without port",
                    h.value
                ),
            );
            return None;
        }
        Some(if under {
            HostMatch::Under(format!(".{name}").into())
        } else {
            HostMatch::Exact(name.into())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req<'a>(headers: &'a HeaderMap, query: Option<&'a str>) -> Request<'a> {
        Request {
            method: &Method::GET,
            path: "/",
            query,
            headers,
            authority: None,
        }
    }

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn cookies_match_as_the_application_reads_them() {
        let beta = Condition {
            field: Field::Cookie("beta".into()),
            want: Want::Exact(b"1"[..].into()),
        };
        let table = [
            ("beta=1", true),
            ("a=2; beta=1", true),
            ("  beta = 1 ;x=y", true),
            ("beta=\"1\"", true),
            ("beta=%31", true),
            ("beta=2", false),
            ("Beta=1", false),
            ("xbeta=1", false),
            ("beta=1x", false),
            ("beta", false),
        ];
        for (cookie, want) in table {
            let h = headers(&[("cookie", cookie)]);
            assert_eq!(beta.accepts(&req(&h, None)), want, "{cookie}");
        }
        let two = headers(&[("cookie", "a=1"), ("cookie", "beta=1")]);
        assert!(beta.accepts(&req(&two, None)), "a second Cookie header");
        let present = Condition {
            field: Field::Cookie("beta".into()),
            want: Want::Present,
        };
        assert!(present.accepts(&req(&headers(&[("cookie", "beta=")]), None)));
        assert!(!present.accepts(&req(&headers(&[("cookie", "alpha=1")]), None)));
    }

    #[test]
    fn query_parameters_match_form_decoded() {
        let v2 = Condition {
            field: Field::Query("v".into()),
            want: Want::Exact(b"2"[..].into()),
        };
        let h = HeaderMap::new();
        let table = [
            (Some("v=2"), true),
            (Some("a=1&v=2"), true),
            (Some("v=1&v=2"), true),
            (Some("%76=%32"), true),
            (Some("v=3"), false),
            (Some("vv=2"), false),
            (Some("v"), false),
            (None, false),
        ];
        for (q, want) in table {
            assert_eq!(v2.accepts(&req(&h, q)), want, "{q:?}");
        }
        let spaced = Condition {
            field: Field::Query("q".into()),
            want: Want::Exact(b"a b"[..].into()),
        };
        assert!(spaced.accepts(&req(&h, Some("q=a+b"))));
        assert!(spaced.accepts(&req(&h, Some("q=a%20b"))));
        let present = Condition {
            field: Field::Query("debug".into()),
            want: Want::Present,
        };
        assert!(present.accepts(&req(&h, Some("debug"))));
        assert!(present.accepts(&req(&h, Some("x=1&debug="))));
    }

    #[test]
    fn header_regex() {
        let ios = Condition {
            field: Field::Header(HeaderName::from_static("x-client")),
            want: Want::Regex(Regex::new("^ios-").unwrap()),
        };
        assert!(ios.accepts(&req(&headers(&[("x-client", "ios-17.2")]), None)));
        assert!(!ios.accepts(&req(&headers(&[("x-client", "android-14")]), None)));
        assert!(!ios.accepts(&req(&headers(&[("x-client", "my-ios-app")]), None)));
        assert!(!ios.accepts(&req(&HeaderMap::new(), None)));
    }

    #[test]
    fn hosts() {
        let exact = HostMatch::Exact("shop.example".into());
        let under = HostMatch::Under(".shop.example".into());
        let table = [
            ("shop.example", true, false),
            ("SHOP.Example", true, false),
            ("a.shop.example", false, true),
            ("A.B.Shop.Example", false, true),
            ("evilshop.example", false, false),
            ("shop.example.evil", false, false),
            ("xshop.example", false, false),
        ];
        for (host, e, u) in table {
            assert_eq!(exact.accepts(host), e, "exact {host}");
            assert_eq!(under.accepts(host), u, "under {host}");
        }
        let h = |v: &str| headers(&[("host", v)]);
        let host_of = |hm: &HeaderMap, authority| {
            Request {
                authority,
                ..req(hm, None)
            }
            .host()
            .map(str::to_string)
        };
        assert_eq!(host_of(&h("Shop.Example:8080"), None).as_deref(), Some("Shop.Example"));
        assert_eq!(host_of(&h("shop.example."), None).as_deref(), Some("shop.example"));
        assert_eq!(host_of(&h("[::1]:8080"), None).as_deref(), Some("[::1]"));
        assert_eq!(
            host_of(&h("a.example"), Some("b.example:443")).as_deref(),
            Some("b.example")
        );
        assert_eq!(host_of(&HeaderMap::new(), None), None);
    }

    #[test]
    fn percent_decoding_keeps_malformed_escapes() {
        assert_eq!(&*percent_decode(b"%", false), b"%");
        assert_eq!(&*percent_decode(b"a%2", false), b"a%2");
        assert_eq!(&*percent_decode(b"%zz1", false), b"%zz1");
        assert_eq!(&*percent_decode(b"%41%62", false), b"Ab");
    }
}
