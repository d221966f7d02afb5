//! `legacy-monolith` binary: parse flags, open the database, serve until Ctrl-C.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::Parser;

/// The legacy shop monolith the strangler proxy sits in front of.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8000")]
    listen: SocketAddr,
    /// SQLite database file (created and seeded if missing).
    #[arg(long, default_value = "data/monolith.db")]
    db: PathBuf,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    shop_kit::cli::init_tracing();
    let args = Args::parse();
    let listener = tokio::net::TcpListener::bind(args.listen).await?;
    legacy_monolith::run(listener, legacy_monolith::Config::new(args.db), shop_kit::cli::ctrl_c()).await
}
