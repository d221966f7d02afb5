//! The legacy shop monolith: catalog, inventory, orders, payments, users and HTML pages in one.
//!
//! Layout:
//! - `lib.rs`   [`Config`], [`run`], the router and the JSON handlers
//! - [`api`]    the JSON contract it answers with: wire types, input checks, error wording
//! - [`store`]  schema, seeding and every SQL query (one SQLite file)
//! - [`pages`]  the server-rendered HTML pages

pub mod api;
pub mod pages;
pub mod store;

use std::future::Future;
use std::path::PathBuf;

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use shop_kit::db::Db;
use shop_kit::extract::{self, Path, Query};
use shop_kit::ApiResult;
use tokio::net::TcpListener;

use crate::api::{
    Order, OrderDetails, OrderRequest, PageQuery, Payment, PaymentRequest, Product, ProductPage, Released, Reservation,
    ReservationRequest, Stock, User, UserOrders,
};

/// How to run the monolith.
#[derive(Debug, Clone)]
pub struct Config {
    /// SQLite file; created and seeded on first start.
    pub db: PathBuf,
}

impl Config {
    pub fn new(db: impl Into<PathBuf>) -> Self {
        Config { db: db.into() }
    }
}

/// Serves the monolith on `listener` until `shutdown` resolves.
pub async fn run(
    listener: TcpListener,
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let db = Db::open_blocking(config.db.clone(), store::SCHEMA, store::is_empty, store::seed).await?;
    shop_kit::serve(listener, router(db), shutdown, None).await
}

/// The whole monolith as a router (no listener), for in-process use.
pub fn router(db: Db) -> Router {
    let app = Router::new()
        .route("/api/catalog/products", get(list_products))
        .route("/api/catalog/products/{id}", get(get_product))
        .route("/api/inventory/{sku}", get(get_stock))
        .route("/api/inventory/{sku}/reservations", post(reserve))
        .route("/api/inventory/reservations/{id}", delete(release))
        .route("/api/orders", post(create_order))
        .route("/api/orders/{id}", get(get_order))
        .route("/api/orders/{id}/details", get(order_details))
        .route("/api/users/{id}", get(get_user))
        .route("/api/users/{id}/orders", get(user_orders))
        .route("/api/payments", post(pay))
        .route("/api/payments/order/{order_id}", get(get_payment))
        .route("/", get(pages::home))
        .route("/products/{id}", get(pages::product))
        .route("/account/{id}", get(pages::account))
        .route("/openapi.json", get(openapi))
        .with_state(db);
    shop_kit::http::finish(app, "legacy-monolith", None)
}

/// The OpenAPI document of every endpoint here (`legacy-monolith/openapi.json`, checked against
/// this router by tests/openapi.rs).
pub const OPENAPI: &str = include_str!("../openapi.json");

async fn openapi() -> ([(axum::http::HeaderName, &'static str); 1], &'static str) {
    ([(axum::http::header::CONTENT_TYPE, "application/json")], OPENAPI)
}

async fn list_products(State(db): State<Db>, Query(query): Query<PageQuery>) -> ApiResult<Json<ProductPage>> {
    let (page, per_page) = query.resolve()?;
    let (items, total) = db.read(move |c| store::products(c, page, per_page)).await?;
    Ok(Json(ProductPage {
        items,
        page,
        per_page,
        total,
    }))
}

async fn get_product(State(db): State<Db>, Path(id): Path<i64>) -> ApiResult<Json<Product>> {
    Ok(Json(db.read(move |c| store::product(c, id)).await?))
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

async fn create_order(
    State(db): State<Db>,
    extract::Json(request): extract::Json<OrderRequest>,
) -> ApiResult<(StatusCode, Json<Order>)> {
    request.validate()?;
    let order = db.write(move |tx| store::create_order(tx, &request)).await?;
    Ok((StatusCode::CREATED, Json(order)))
}

async fn get_order(State(db): State<Db>, Path(id): Path<i64>) -> ApiResult<Json<Order>> {
    Ok(Json(db.read(move |c| store::order(c, id)).await?))
}

/// One order with its payment (or null) and the stock of each of its SKUs: the endpoint that
/// joins three capabilities, which strangler's `compose` mode rebuilds from the services.
async fn order_details(State(db): State<Db>, Path(id): Path<i64>) -> ApiResult<Json<OrderDetails>> {
    Ok(Json(
        db.read(move |c| {
            let order = store::order(c, id)?;
            let payment = store::payment_for(c, id).ok();
            let stock = order
                .items
                .iter()
                .map(|line| store::stock(c, &line.sku))
                .collect::<ApiResult<Vec<Stock>>>()?;
            Ok(OrderDetails { order, payment, stock })
        })
        .await?,
    ))
}

async fn get_user(State(db): State<Db>, Path(id): Path<i64>) -> ApiResult<Json<User>> {
    Ok(Json(db.read(move |c| store::user(c, id)).await?))
}

async fn user_orders(State(db): State<Db>, Path(id): Path<i64>) -> ApiResult<Json<UserOrders>> {
    let items = db.read(move |c| store::user_orders(c, id)).await?;
    Ok(Json(UserOrders { user_id: id, items }))
}

async fn pay(
    State(db): State<Db>,
    extract::Json(request): extract::Json<PaymentRequest>,
) -> ApiResult<(StatusCode, Json<Payment>)> {
    let payment = db.write(move |tx| store::pay(tx, request.order_id)).await?;
    Ok((StatusCode::CREATED, Json(payment)))
}

async fn get_payment(State(db): State<Db>, Path(order_id): Path<i64>) -> ApiResult<Json<Payment>> {
    Ok(Json(db.read(move |c| store::payment_for(c, order_id)).await?))
}
