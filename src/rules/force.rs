//! `force_side:` (testers first): which requests may choose their side, compiled once at load.
//!
//! Trust comes from a token (from an environment variable or a file, compared in constant time)
//! or from the client's network. An untrusted request's header has no effect; neither header is
//! ever forwarded.

use std::net::IpAddr;

use crate::config::Spanned;
use http::{HeaderMap, HeaderName};
use subtle::ConstantTimeEq;

use super::compile::{relative_to, Compiler};
use super::Side;
use crate::config::RulesFile;

/// Shorter tokens are refused: they can be guessed.
const MIN_TOKEN: usize = 16;

/// The compiled `force_side:`.
#[derive(Debug)]
pub struct ForceSide {
    pub header: HeaderName,
    pub token_header: HeaderName,
    token: Option<Vec<u8>>,
    cidrs: Vec<ipnet::IpNet>,
}

impl ForceSide {
    /// The side a request asks for, if it asks and is trusted. `client` is the client's address
    /// (through `trusted_proxies`).
    pub fn side(&self, headers: &HeaderMap, client: Option<IpAddr>) -> Option<Side> {
        let side = match headers.get(&self.header)?.as_bytes() {
            b"new" => Side::New,
            b"legacy" => Side::Legacy,
            _ => return None,
        };
        let by_token = self.token.as_ref().is_some_and(|want| {
            headers
                .get(&self.token_header)
                .is_some_and(|got| bool::from(got.as_bytes().ct_eq(want)))
        });
        let by_network = client.is_some_and(|ip| self.cidrs.iter().any(|n| n.contains(&ip)));
        (by_token || by_network).then_some(side)
    }
}

impl Compiler<'_> {
    pub(super) fn force_side(&mut self, raw: &RulesFile) -> Option<ForceSide> {
        let f = raw.force_side.as_ref()?;
        let at = &f.referenced;
        let v = &f.value;
        let mut name = |h: &Option<Spanned<String>>, default: &'static str, key: &str| -> Option<HeaderName> {
            let Some(h) = h else {
                return Some(HeaderName::from_static(default));
            };
            match HeaderName::from_bytes(h.value.trim().as_bytes()) {
                Ok(n) => Some(n),
                Err(_) => {
                    self.err(
                        &h.referenced,
                        None,
                        format!("force_side.{key}: \"{}\" is not a header name", h.value),
                    );
                    None
                }
            }
        };
        let header = name(&v.header, "x-strangler-side", "header");
        let token_header = name(&v.token_header, "x-strangler-token", "token_header");
        let token = match (&v.token_env, &v.token_file) {
            (Some(_), Some(t)) => {
                self.err(
                    &t.referenced,
                    None,
                    "force_side: set token_env or token_file, not both".into(),
                );
                None
            }
            (Some(e), None) => match std::env::var(e.value.trim()) {
                Ok(t) if !t.trim().is_empty() => Some((t.trim().as_bytes().to_vec(), &e.referenced)),
                _ => {
                    self.err(
                        &e.referenced,
                        None,
                        format!(
                            "force_side.token_env: {} is not set in the proxy's environment; export it, or use token_file or cidrs",
                            e.value.trim()
                        ),
                    );
                    None
                }
            },
            (None, Some(file)) => {
                let path = relative_to(self.file, &file.value);
                match std::fs::read_to_string(&path) {
                    Ok(t) => Some((
                        t.lines().next().unwrap_or("").trim().as_bytes().to_vec(),
                        &file.referenced,
                    )),
                    Err(e) => {
                        self.err(
                            &file.referenced,
                            None,
                            format!("force_side.token_file: can't read {} ({e})", path.display()),
                        );
                        None
                    }
                }
            }
            (None, None) => None,
        };
        let token = match token {
            Some((t, place)) if t.len() < MIN_TOKEN => {
                self.err(
                    place,
                    None,
                    format!(
                        "force_side: the token has {} characters; use at least {MIN_TOKEN}",
                        t.len()
                    ),
                );
                None
            }
            other => other.map(|(t, _)| t),
        };
        let mut cidrs = Vec::new();
        for c in v.cidrs.iter().flatten() {
            let s = c.value.trim();
            match s
                .parse::<ipnet::IpNet>()
                .or_else(|_| s.parse::<IpAddr>().map(ipnet::IpNet::from))
            {
                Ok(n) => cidrs.push(n),
                Err(_) => self.err(
                    &c.referenced,
                    None,
                    format!("force_side.cidrs: \"{s}\" is not an IP address or CIDR (e.g. 10.0.0.0/8)"),
                ),
            }
        }
        if token.is_none() && cidrs.is_empty() && v.token_env.is_none() && v.token_file.is_none() {
            self.err(
                at,
                None,
                "force_side trusts nobody: give token_env, token_file or cidrs".into(),
            );
        }
        Some(ForceSide {
            header: header?,
            token_header: token_header?,
            token,
            cidrs,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn force() -> ForceSide {
        ForceSide {
            header: HeaderName::from_static("x-strangler-side"),
            token_header: HeaderName::from_static("x-strangler-token"),
            token: Some(b"0123456789abcdef-secret".to_vec()),
            cidrs: vec!["10.0.0.0/8".parse().unwrap()],
        }
    }

    #[test]
    fn who_may_choose_a_side() {
        let outside: Option<IpAddr> = Some("192.0.2.7".parse().unwrap());
        let inside: Option<IpAddr> = Some("10.1.2.3".parse().unwrap());
        type Case = (&'static [(&'static str, &'static str)], Option<IpAddr>, Option<Side>);
        let cases: Vec<Case> = vec![
            (&[("x-strangler-side", "new")], outside, None),
            (&[("x-strangler-side", "new")], inside, Some(Side::New)),
            (&[("x-strangler-side", "legacy")], inside, Some(Side::Legacy)),
            (&[("x-strangler-side", "NEW")], inside, None),
            (&[("x-strangler-side", "sideways")], inside, None),
            (
                &[
                    ("x-strangler-side", "new"),
                    ("x-strangler-token", "0123456789abcdef-secret"),
                ],
                outside,
                Some(Side::New),
            ),
            (
                &[
                    ("x-strangler-side", "new"),
                    ("x-strangler-token", "0123456789abcdef-secre"),
                ],
                outside,
                None,
            ),
            (
                &[
                    ("x-strangler-side", "new"),
                    ("x-strangler-token", "0123456789abcdef-secret!"),
                ],
                outside,
                None,
            ),
            (&[("x-strangler-token", "0123456789abcdef-secret")], inside, None),
            (&[], None, None),
        ];
        let f = force();
        for (headers, client, want) in cases {
            let mut map = HeaderMap::new();
            for (k, v) in headers {
                map.insert(HeaderName::from_static(k), HeaderValue::from_static(v));
            }
            assert_eq!(f.side(&map, client), want, "{headers:?} from {client:?}");
        }
    }
}
