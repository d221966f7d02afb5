//! The extracted orders service: place and read orders, reserving stock via inventory.
//!
//! Layout:
//! - `lib.rs`      [`Config`], [`run`], the router and handlers
//! - [`api`]       the JSON contract it answers with: wire types, input checks, error wording
//! - [`store`]     orders DB: orders, lines, read copies of users and prices
//! - [`inventory`] HTTP client for the inventory service

pub mod api;
pub mod inventory;
pub mod store;

use std::future::Future;
use std::path::PathBuf;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use shop_kit::db::Db;
use shop_kit::extract::{self, Path};
use shop_kit::http::REQUEST_ID;
use shop_kit::ApiResult;
use tokio::net::TcpListener;

pub use shop_kit::faults::{Drift, FaultSettings, Faults};

use crate::api::{Order, OrderRequest, UserOrders};
use crate::inventory::InventoryClient;

/// How to run the orders service.
#[derive(Debug, Clone)]
pub struct Config {
    /// SQLite file; created and seeded on first start.
    pub db: PathBuf,
    /// Base URL of the inventory service, e.g. `http://127.0.0.1:8101`.
    pub inventory_url: String,
    /// Live fault settings; keep a clone to change them while the service runs.
    pub faults: Faults,
}

impl Config {
    /// Inventory at `http://127.0.0.1:8101`, no faults.
    pub fn new(db: impl Into<PathBuf>) -> Self {
        Config {
            db: db.into(),
            inventory_url: "http://127.0.0.1:8101".to_string(),
            faults: Faults::default(),
        }
    }
}

#[derive(Clone)]
struct AppState {
    db: Db,
    inventory: InventoryClient,
}

/// Serves orders on `listener` until `shutdown` resolves.
pub async fn run(
    listener: TcpListener,
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let db = Db::open_blocking(config.db.clone(), store::SCHEMA, store::is_empty, store::seed).await?;
    let state = AppState {
        db,
        inventory: InventoryClient::new(&config.inventory_url)?,
    };
    let app = Router::new()
        .route("/api/orders", post(create_order))
        .route("/api/orders/{id}", get(get_order))
        .route("/api/users/{id}/orders", get(user_orders))
        .with_state(state);
    let app = shop_kit::http::finish(app, "orders-service", Some(config.faults.clone()));
    shop_kit::serve(listener, app, shutdown, Some(config.faults)).await
}

/// Validates against the read copies, reserves every line in inventory (releasing what was
/// held if one fails), then writes the order.
async fn create_order(
    State(state): State<AppState>,
    parent: Option<Extension<shop_kit::otel::Parent>>,
    headers: HeaderMap,
    extract::Json(request): extract::Json<OrderRequest>,
) -> ApiResult<(StatusCode, Json<Order>)> {
    request.validate()?;
    let request_id = headers
        .get(REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    let user_id = request.user_id;
    let lines = state.db.read(move |c| store::price_lines(c, &request)).await?;
    let parent = parent.as_ref().map(|p| &p.0);
    let mut held = Vec::with_capacity(lines.len());
    for line in &lines {
        match state
            .inventory
            .reserve(&line.sku, line.quantity, &request_id, parent)
            .await
        {
            Ok(id) => held.push(id),
            Err(err) => {
                state.inventory.release_all(&held, &request_id, parent).await;
                return Err(err);
            }
        }
    }
    match state.db.write(move |tx| store::insert_order(tx, user_id, lines)).await {
        Ok(order) => Ok((StatusCode::CREATED, Json(order))),
        Err(err) => {
            state.inventory.release_all(&held, &request_id, parent).await;
            Err(err)
        }
    }
}

async fn get_order(State(state): State<AppState>, Path(id): Path<i64>) -> ApiResult<Json<Order>> {
    Ok(Json(state.db.read(move |c| store::order(c, id)).await?))
}

async fn user_orders(State(state): State<AppState>, Path(id): Path<i64>) -> ApiResult<Json<UserOrders>> {
    let items = state.db.read(move |c| store::user_orders(c, id)).await?;
    Ok(Json(UserOrders { user_id: id, items }))
}
