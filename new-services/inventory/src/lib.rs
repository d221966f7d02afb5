//! The extracted inventory service: stock levels and reservations, with fault injection.
//!
//! Layout:
//! - `lib.rs`  [`Config`], [`run`], the router and handlers
//! - [`api`]   the JSON contract it answers with: wire types, input checks, error wording
//! - [`store`] schema, seeding (stock only) and queries on its own SQLite file

pub mod api;
pub mod store;

use std::future::Future;
use std::path::PathBuf;

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use shop_kit::db::Db;
use shop_kit::extract::{self, Path};
use shop_kit::ApiResult;
use tokio::net::TcpListener;

pub use shop_kit::faults::{Drift, FaultSettings, Faults};

use crate::api::{Released, Reservation, ReservationRequest, Stock};

/// How to run the inventory service.
#[derive(Debug, Clone)]
pub struct Config {
    /// SQLite file; created and seeded on first start.
    pub db: PathBuf,
    /// Live fault settings; keep a clone to change them while the service runs.
    pub faults: Faults,
}

impl Config {
    /// No faults.
    pub fn new(db: impl Into<PathBuf>) -> Self {
        Config {
            db: db.into(),
            faults: Faults::default(),
        }
    }
}

/// Serves inventory on `listener` until `shutdown` resolves.
pub async fn run(
    listener: TcpListener,
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let db = Db::open_blocking(config.db.clone(), store::SCHEMA, store::is_empty, store::seed).await?;
    let app = router(db, config.faults.clone());
    shop_kit::serve(listener, app, shutdown, Some(config.faults)).await
}

/// The service as a router (no listener).
pub fn router(db: Db, faults: Faults) -> Router {
    let app = Router::new()
        .route("/api/inventory/{sku}", get(get_stock))
        .route("/api/inventory/{sku}/reservations", post(reserve))
        .route("/api/inventory/reservations/{id}", delete(release))
        .with_state(db);
    shop_kit::http::finish(app, "inventory-service", Some(faults))
}

async fn get_stock(State(db): State<Db>, Path(sku): Path<String>) -> ApiResult<Json<Stock>> {
    Ok(Json(db.read(move |c| store::stock(c, &sku)).await?))
}

async fn reserve(
    State(db): State<Db>,
    Path(sku): Path<String>,
    extract::Json(request): extract::Json<ReservationRequest>,
) -> ApiResult<(StatusCode, Json<Reservation>)> {
    api::validate_quantity(request.quantity)?;
    let reservation = db
        .write(move |tx| store::reserve(tx, &sku, request.quantity, request.order_id))
        .await?;
    Ok((StatusCode::CREATED, Json(reservation)))
}

async fn release(State(db): State<Db>, Path(id): Path<i64>) -> ApiResult<Json<Released>> {
    db.write(move |tx| store::release(tx, id)).await?;
    Ok(Json(Released { id, released: true }))
}
