//! `orders-service` binary: parse flags, open the database, serve until Ctrl-C.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::Parser;
use shop_kit::cli::FaultArgs;

/// The extracted orders service (orders; reserves stock via the inventory service).
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8102")]
    listen: SocketAddr,
    /// SQLite database file (created and seeded if missing).
    #[arg(long, default_value = "data/orders.db")]
    db: PathBuf,
    /// Base URL of the inventory service.
    #[arg(long, default_value = "http://127.0.0.1:8101")]
    inventory_url: String,
    #[command(flatten)]
    faults: FaultArgs,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    shop_kit::cli::init_tracing();
    let args = Args::parse();
    let mut config = orders_service::Config::new(args.db);
    config.inventory_url = args.inventory_url;
    config.faults.set(args.faults.settings()?);
    let listener = tokio::net::TcpListener::bind(args.listen).await?;
    orders_service::run(listener, config, shop_kit::cli::ctrl_c()).await
}
