//! The baseline for `bench/compare.sh`: the least a Pingora proxy can do for the same job.
//! `/api/orders/` goes to one upstream, everything else to the other; nothing else.
//!
//! Run: `cargo run --release --example bare_pingora -- LISTEN ORDERS_UPSTREAM OTHER_UPSTREAM`

use async_trait::async_trait;
use pingora_core::server::configuration::ServerConf;
use pingora_core::server::Server;
use pingora_core::upstreams::peer::HttpPeer;
use pingora_error::Result;
use pingora_proxy::{ProxyHttp, Session};

/// As strangler's: mimalloc, or with `--features system-alloc` the allocator heap profilers follow.
#[cfg(not(feature = "system-alloc"))]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

struct Bare {
    orders: HttpPeer,
    other: HttpPeer,
}

#[async_trait]
impl ProxyHttp for Bare {
    type CTX = ();
    fn new_ctx(&self) {}

    async fn upstream_peer(&self, session: &mut Session, _ctx: &mut ()) -> Result<Box<HttpPeer>> {
        let peer = if session.req_header().uri.path().starts_with("/api/orders/") {
            &self.orders
        } else {
            &self.other
        };
        Ok(Box::new(peer.clone()))
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let [_, listen, orders, other] = &args[..] else {
        eprintln!("usage: bare_pingora LISTEN ORDERS_UPSTREAM OTHER_UPSTREAM (addresses like 127.0.0.1:8401)");
        std::process::exit(2);
    };
    let conf = ServerConf {
        threads: 1,
        work_stealing: false,
        grace_period_seconds: Some(0),
        ..ServerConf::default()
    };
    let mut server = Server::new_with_opt_and_conf(None, conf);
    server.bootstrap();
    let peer = |a: &str| HttpPeer::new(a.to_string(), false, String::new());
    let mut svc = pingora_proxy::http_proxy_service(
        &server.configuration,
        Bare {
            orders: peer(orders),
            other: peer(other),
        },
    );
    svc.add_tcp(listen);
    server.add_service(svc);
    server.run_forever();
}
