//! `inventory-service` binary: parse flags, open the database, serve until Ctrl-C.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::Parser;
use shop_kit::cli::FaultArgs;

/// The extracted inventory service (stock and reservations).
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8101")]
    listen: SocketAddr,
    /// SQLite database file (created and seeded if missing).
    #[arg(long, default_value = "data/inventory.db")]
    db: PathBuf,
    #[command(flatten)]
    faults: FaultArgs,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    shop_kit::cli::init_tracing();
    let args = Args::parse();
    let config = inventory_service::Config::new(args.db);
    config.faults.set(args.faults.settings()?);
    let listener = tokio::net::TcpListener::bind(args.listen).await?;
    inventory_service::run(listener, config, shop_kit::cli::ctrl_c()).await
}
