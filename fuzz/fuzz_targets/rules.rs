//! Fuzz the rules parser and compiler: any text gives rules or `file:line:col` errors, never a panic.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use strangler::rules::RuleSet;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let file = Path::new("rules.yaml");
    match strangler::config::parse(file, text) {
        Ok(raw) => {
            // Compiling resolves host names; keep the fuzzer off DNS.
            if only_ip_hosts(text) {
                if let Err(errors) = strangler::rules::compile(file, &raw) {
                    assert!(!errors.0.is_empty());
                }
            }
        }
        Err(errors) => assert!(errors.to_string().starts_with("rules.yaml:")),
    }
});

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
