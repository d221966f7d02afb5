//! The orders database: orders and their lines, plus read copies of users and product prices.

use rusqlite::{params, Connection, OptionalExtension, Transaction};
use shop_kit::ApiResult;

use crate::api::{self, Order, OrderLine, OrderRequest};

pub const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS users (
    id INTEGER PRIMARY KEY
);
CREATE TABLE IF NOT EXISTS products (
    sku TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    price_cents INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS orders (
    id INTEGER PRIMARY KEY,
    user_id INTEGER NOT NULL REFERENCES users(id),
    status TEXT NOT NULL,
    total_cents INTEGER NOT NULL,
    created_at TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS orders_by_user ON orders(user_id, id);
CREATE TABLE IF NOT EXISTS order_items (
    order_id INTEGER NOT NULL REFERENCES orders(id),
    line INTEGER NOT NULL,
    sku TEXT NOT NULL,
    name TEXT NOT NULL,
    quantity INTEGER NOT NULL,
    unit_price_cents INTEGER NOT NULL,
    PRIMARY KEY (order_id, line)
);
";

pub fn is_empty(conn: &Connection) -> rusqlite::Result<bool> {
    shop_kit::db::table_is_empty(conn, "users")
}

/// Orders owns orders and lines; users and prices are read-only copies of the monolith's.
pub fn seed(tx: &Transaction<'_>) -> rusqlite::Result<()> {
    let seed = shop_kit::seed::generate();
    for u in &seed.users {
        tx.execute("INSERT INTO users (id) VALUES (?1)", [u.id])?;
    }
    for p in &seed.products {
        tx.execute(
            "INSERT INTO products (sku, name, price_cents) VALUES (?1, ?2, ?3)",
            params![p.sku, p.name, p.price_cents],
        )?;
    }
    for o in &seed.orders {
        tx.execute(
            "INSERT INTO orders (id, user_id, status, total_cents, created_at)
             VALUES (?1, ?2, ?3, ?4, ?5)",
            params![o.id, o.user_id, o.status, o.total_cents, o.created_at],
        )?;
        for (line, item) in o.items.iter().enumerate() {
            tx.execute(
                "INSERT INTO order_items (order_id, line, sku, name, quantity, unit_price_cents)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![
                    o.id,
                    line as i64,
                    item.sku,
                    item.name,
                    item.quantity,
                    item.unit_price_cents
                ],
            )?;
        }
    }
    Ok(())
}

fn require_user(conn: &Connection, id: i64) -> ApiResult<()> {
    conn.query_row("SELECT id FROM users WHERE id = ?1", [id], |r| r.get::<_, i64>(0))
        .optional()?
        .map(|_| ())
        .ok_or_else(|| api::user_not_found(id))
}

/// Checks the user and every sku against the read copies and prices each line.
pub fn price_lines(conn: &Connection, request: &OrderRequest) -> ApiResult<Vec<OrderLine>> {
    require_user(conn, request.user_id)?;
    let mut stmt = conn.prepare_cached("SELECT name, price_cents FROM products WHERE sku = ?1")?;
    request
        .items
        .iter()
        .map(|item| {
            let (name, price): (String, i64) = stmt
                .query_row([&item.sku], |r| Ok((r.get(0)?, r.get(1)?)))
                .optional()?
                .ok_or_else(|| api::sku_not_found(&item.sku))?;
            Ok(OrderLine {
                sku: item.sku.clone(),
                name,
                quantity: item.quantity,
                unit_price_cents: price,
                line_total_cents: item.quantity * price,
            })
        })
        .collect()
}

/// Writes a new pending order; its id continues after the highest existing one.
pub fn insert_order(tx: &Transaction<'_>, user_id: i64, lines: Vec<OrderLine>) -> ApiResult<Order> {
    let total_cents = lines.iter().map(|l| l.line_total_cents).sum();
    let created_at = shop_kit::time::now_rfc3339();
    tx.execute(
        "INSERT INTO orders (user_id, status, total_cents, created_at) VALUES (?1, 'pending', ?2, ?3)",
        params![user_id, total_cents, created_at],
    )?;
    let id = tx.last_insert_rowid();
    for (line_no, line) in lines.iter().enumerate() {
        tx.execute(
            "INSERT INTO order_items (order_id, line, sku, name, quantity, unit_price_cents)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![
                id,
                line_no as i64,
                line.sku,
                line.name,
                line.quantity,
                line.unit_price_cents
            ],
        )?;
    }
    Ok(Order {
        id,
        user_id,
        status: "pending".to_string(),
        items: lines,
        total_cents,
        created_at,
    })
}

pub fn order(conn: &Connection, id: i64) -> ApiResult<Order> {
    let head = conn
        .query_row(
            "SELECT id, user_id, status, total_cents, created_at FROM orders WHERE id = ?1",
            [id],
            |r| {
                Ok(Order {
                    id: r.get(0)?,
                    user_id: r.get(1)?,
                    status: r.get(2)?,
                    items: Vec::new(),
                    total_cents: r.get(3)?,
                    created_at: r.get(4)?,
                })
            },
        )
        .optional()?;
    let mut order = head.ok_or_else(|| api::order_not_found(id))?;
    let mut stmt = conn.prepare_cached(
        "SELECT sku, name, quantity, unit_price_cents FROM order_items
         WHERE order_id = ?1 ORDER BY line",
    )?;
    order.items = stmt
        .query_map([id], |r| {
            let (quantity, unit): (i64, i64) = (r.get(2)?, r.get(3)?);
            Ok(OrderLine {
                sku: r.get(0)?,
                name: r.get(1)?,
                quantity,
                unit_price_cents: unit,
                line_total_cents: quantity * unit,
            })
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    Ok(order)
}

pub fn user_orders(conn: &Connection, user_id: i64) -> ApiResult<Vec<Order>> {
    require_user(conn, user_id)?;
    let ids = conn
        .prepare_cached("SELECT id FROM orders WHERE user_id = ?1 ORDER BY id")?
        .query_map([user_id], |r| r.get::<_, i64>(0))?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    ids.into_iter().map(|id| order(conn, id)).collect()
}
