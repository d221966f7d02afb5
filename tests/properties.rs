//! Property tests: the path normalizer and the rules parser on generated input, and random
//! paths through the real proxy (the path forwarded is the path matched).

mod common;

use std::path::Path;

use common::{echo, proxy::raw_get, proxy::rules, proxy::Proxy};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use serde_json::Value;
use strangler::path::{normalize, normalize_with};

/// Path-like strings: segments of letters, dots, escapes (some of them encoded dots, slashes,
/// UTF-8 and overlong bytes), semicolons and odd bytes, joined by one or more slashes.
fn path_like() -> impl Strategy<Value = String> {
    let piece = prop_oneof![
        "[a-z]{1,4}",
        Just(".".to_string()),
        Just("..".to_string()),
        Just("%2e".to_string()),
        Just("%2E%2e".to_string()),
        Just("%2f".to_string()),
        Just("%5C".to_string()),
        Just("%25".to_string()),
        Just("%41".to_string()),
        Just("%c3%a9".to_string()),
        Just("%C0%AE".to_string()),
        Just("%ef%bc%8f".to_string()),
        Just(";x=1".to_string()),
        Just("%".to_string()),
        Just("~".to_string()),
        "%[0-9a-fA-F]{2}",
        any::<char>().prop_map(|c| c.to_string()),
    ];
    let segment = prop::collection::vec(piece, 0..4).prop_map(|p| p.concat());
    let slashes = prop_oneof![4 => Just("/"), 1 => Just("//")];
    prop::collection::vec((slashes, segment), 0..6)
        .prop_map(|parts| {
            parts
                .into_iter()
                .map(|(s, seg)| format!("{s}{seg}"))
                .collect::<String>()
        })
        .prop_map(|p| if p.is_empty() { "/".to_string() } else { p })
}

proptest! {
    #![proptest_config(Config { cases: 4000, ..Config::default() })]

    #[test]
    fn normalize_never_panics_and_is_idempotent(raw in prop_oneof![path_like(), any::<String>()], semis in any::<bool>()) {
        if let Ok(once) = normalize_with(&raw, semis) {
            let twice = normalize_with(&once, semis);
            prop_assert_eq!(twice.as_deref(), Ok(&*once), "not idempotent on {:?}", raw);
            prop_assert!(once.starts_with('/'));
            prop_assert!(once.is_ascii(), "{:?} gave non-ASCII {:?}", raw, once);
            prop_assert!(!once.contains("//"), "{:?} gave {:?}", raw, once);
            prop_assert!(once.split('/').all(|s| s != "." && s != ".."), "{:?} gave {:?}", raw, once);
        }
    }

    #[test]
    fn rules_parser_never_panics(text in rules_like()) {
        let file = Path::new("rules.yaml");
        if let Ok(raw) = strangler::config::parse(file, &text) {
            // Compiling resolves upstream host names: only when every URL host is an IP literal,
            // so the test never waits on DNS.
            if only_ip_hosts(&text) {
                let _ = strangler::rules::compile(file, &raw);
            }
        }
    }
}

/// The repo's rules.yaml with random edits (a line dropped, duplicated or cut, a random token
/// spliced in), or arbitrary text.
fn rules_like() -> impl Strategy<Value = String> {
    let base = include_str!("../rules.yaml");
    let lines: Vec<&'static str> = base.lines().collect();
    let n = lines.len();
    let token = prop_oneof![
        Just("{".to_string()),
        Just("}".to_string()),
        Just("[".to_string()),
        Just(": ".to_string()),
        Just("- ".to_string()),
        Just("&a ".to_string()),
        Just("*a".to_string()),
        Just("!!binary ".to_string()),
        Just("\t".to_string()),
        Just("\"".to_string()),
        Just("mode: canary".to_string()),
        Just("percent: -1".to_string()),
        Just("max_body: 0".to_string()),
        Just("path: /a/{id}/{id}".to_string()),
        "[ -~]{0,12}",
        any::<String>(),
    ];
    let edited = prop::collection::vec((0..n, 0..4u8, token, 0..80usize), 1..6).prop_map(move |edits| {
        let mut lines: Vec<String> = lines.iter().map(|l| l.to_string()).collect();
        for (at, kind, tok, col) in edits {
            let at = at % lines.len().max(1);
            if lines.is_empty() {
                break;
            }
            match kind {
                0 => {
                    lines.remove(at);
                }
                1 => {
                    let l = lines[at].clone();
                    lines.insert(at, l);
                }
                2 => {
                    let cut = (0..=col.min(lines[at].len()))
                        .rev()
                        .find(|&c| lines[at].is_char_boundary(c))
                        .unwrap_or(0);
                    lines[at].truncate(cut);
                }
                _ => {
                    let c = (0..=col.min(lines[at].len()))
                        .rev()
                        .find(|&c| lines[at].is_char_boundary(c))
                        .unwrap_or(0);
                    lines[at].insert_str(c, &tok);
                }
            }
        }
        lines.join("\n")
    });
    prop_oneof![4 => edited, 1 => any::<String>()]
}

fn only_ip_hosts(text: &str) -> bool {
    text.split("://").skip(1).all(|rest| {
        let host_port: String = rest
            .chars()
            .take_while(|c| !matches!(c, '/' | '"' | '\'' | ' ' | '}' | ',' | '\n'))
            .collect();
        let host = host_port.rsplit_once(':').map_or(host_port.as_str(), |(h, _)| h);
        host.trim_matches(['[', ']']).parse::<std::net::IpAddr>().is_ok()
    })
}

/// Random paths over real HTTP: whatever the proxy forwards is exactly `normalize(sent)`, the
/// path its routing saw; anything it can't normalize is refused with 400 and goes nowhere.
#[tokio::test(flavor = "multi_thread")]
async fn the_path_forwarded_is_the_path_matched() {
    let mono = echo::start("monolith").await;
    let svc = echo::start("svc").await;
    let proxy = Proxy::start(&rules(
        &[("monolith", mono), ("svc", svc)],
        "  - { name: admin, match: { prefix: /admin }, mode: migrated, service: svc }\n",
    ))
    .await;
    // Only what RFC 3986 allows raw in a path (other bytes are the HTTP parser's business).
    let sendable = path_like().prop_filter("RFC 3986 path bytes", |p| {
        p.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=:@/%".contains(&b))
    });
    let mut runner = TestRunner::new(Config {
        cases: 300,
        ..Config::default()
    });
    use proptest::strategy::ValueTree;
    let cases: Vec<String> = (0..300)
        .filter_map(|_| sendable.new_tree(&mut runner).ok().map(|t| t.current()))
        .collect();
    assert!(cases.len() > 200, "the generator gave only {} paths", cases.len());
    let (mut routed, mut refused) = (0, 0);
    for sent in &cases {
        let (status, text) = raw_get(proxy.addr, sent).await;
        match normalize(sent) {
            Ok(want) => {
                routed += 1;
                assert_eq!(status, 200, "{sent}: {text}");
                let body = &text[text.find("\r\n\r\n").unwrap() + 4..];
                let v: Value = serde_json::from_str(&body[body.find('{').unwrap()..=body.rfind('}').unwrap()]).unwrap();
                assert_eq!(v["path"], *want, "{sent}");
                let admin = want == "/admin" || want.starts_with("/admin/");
                assert_eq!(v["server"], if admin { "svc" } else { "monolith" }, "{sent}");
            }
            Err(e) => {
                refused += 1;
                assert_eq!(status, 400, "{sent} ({}): {text}", e.code());
                assert!(
                    !text.to_ascii_lowercase().contains("x-strangler-upstream"),
                    "{sent} reached an upstream"
                );
            }
        }
    }
    assert!(
        routed > 50 && refused > 50,
        "a lopsided sample: {routed} routed, {refused} refused"
    );
}
