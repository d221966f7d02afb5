//! Path normalization over real HTTP: what reaches the upstream, and what never does.

mod common;

use common::{echo, proxy::raw_get, proxy::rules, proxy::Proxy};
use serde_json::Value;

async fn setup() -> Proxy {
    let mono = echo::start("monolith").await;
    let svc = echo::start("svc").await;
    Proxy::start(&rules(
        &[("monolith", mono), ("svc", svc)],
        "  - { name: admin, match: { prefix: /admin }, mode: migrated, service: svc }\n\
         \x20 - { name: api, match: { prefix: /api }, mode: legacy }\n",
    ))
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn the_upstream_receives_the_normalized_path() {
    let proxy = setup().await;
    let cases = [
        ("/api//orders///7", "/api/orders/7", "api"),
        ("/api/./orders/7", "/api/orders/7", "api"),
        ("/api/x/../orders", "/api/orders", "api"),
        ("/%61pi/%7Euser", "/api/~user", "api"),
        ("/api/%2e%2e/admin/users", "/admin/users", "admin"),
        ("/api/%2E/orders", "/api/orders", "api"),
        ("/api/a%20b", "/api/a%20b", "api"),
        ("/api/q?x=%2F..%2F&y=//", "/api/q?x=%2F..%2F&y=//", "api"),
        ("/api/orders/..", "/api/", "api"),
        ("//admin//x", "/admin/x", "admin"),
    ];
    for (sent, want, route) in cases {
        let (status, text) = raw_get(proxy.addr, sent).await;
        assert_eq!(status, 200, "{sent}: {text}");
        assert!(
            text.to_ascii_lowercase()
                .contains(&format!("x-strangler-route: {route}\r\n")),
            "{sent}: {text}"
        );
        let body = &text[text.find("\r\n\r\n").unwrap() + 4..];
        let json = &body[body.find('{').unwrap()..=body.rfind('}').unwrap()];
        let v: Value = serde_json::from_str(json).unwrap();
        assert_eq!(v["path"], want, "{sent}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn unsafe_paths_get_400_and_reach_no_upstream() {
    let proxy = setup().await;
    let cases = [
        ("/api/a%2Fb", "encoded_slash"),
        ("/api/a%2fb", "encoded_slash"),
        ("/api/a%5Cb", "backslash"),
        ("/api/a%5cb", "backslash"),
        ("/api/a%00b", "nul"),
        ("/api/a%zzb", "bad_percent_encoding"),
        ("/api/a%4", "bad_percent_encoding"),
        ("/..", "above_root"),
        ("/api/../../etc/passwd", "above_root"),
        ("/%2e%2e/etc/passwd", "above_root"),
    ];
    for (sent, reason) in cases {
        let (status, text) = raw_get(proxy.addr, sent).await;
        assert_eq!(status, 400, "{sent}: {text}");
        assert!(text.contains(&format!("\"reason\":\"{reason}\"")), "{sent}: {text}");
        assert!(
            !text.to_ascii_lowercase().contains("x-strangler-upstream"),
            "{sent} reached an upstream"
        );
    }
    // The proxy keeps serving everyone else.
    let (status, _) = raw_get(proxy.addr, "/api/fine").await;
    assert_eq!(status, 200);
    let m = proxy.metrics().await;
    assert!(
        m.contains(r#"strangler_rejected_requests_total{reason="above_root"} 3"#),
        "{m}"
    );
    assert!(
        !m.contains(r#"strangler_requests_total{route="api",side="legacy",status="2xx",upstream="monolith"} 0"#),
        "{m}"
    );
}
