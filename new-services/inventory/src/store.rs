//! The inventory database: stock per sku and reservations against it.

use rusqlite::{params, Connection, OptionalExtension, Transaction};
use shop_kit::ApiResult;

use crate::api::{self, Reservation, Stock};

pub const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS stock (
    sku TEXT PRIMARY KEY,
    on_hand INTEGER NOT NULL CHECK (on_hand >= 0),
    reserved INTEGER NOT NULL DEFAULT 0 CHECK (reserved >= 0 AND reserved <= on_hand)
);
CREATE TABLE IF NOT EXISTS reservations (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    sku TEXT NOT NULL REFERENCES stock(sku),
    quantity INTEGER NOT NULL CHECK (quantity > 0),
    order_id INTEGER,
    created_at TEXT NOT NULL,
    released_at TEXT
);
";

pub fn is_empty(conn: &Connection) -> rusqlite::Result<bool> {
    shop_kit::db::table_is_empty(conn, "stock")
}

/// Inventory owns stock only.
pub fn seed(tx: &Transaction<'_>) -> rusqlite::Result<()> {
    for s in shop_kit::seed::generate().stock {
        tx.execute(
            "INSERT INTO stock (sku, on_hand) VALUES (?1, ?2)",
            params![s.sku, s.on_hand],
        )?;
    }
    Ok(())
}

pub fn stock(conn: &Connection, sku: &str) -> ApiResult<Stock> {
    conn.query_row("SELECT sku, on_hand, reserved FROM stock WHERE sku = ?1", [sku], |r| {
        let (on_hand, reserved): (i64, i64) = (r.get(1)?, r.get(2)?);
        Ok(Stock {
            sku: r.get(0)?,
            on_hand,
            reserved,
            available: on_hand - reserved,
        })
    })
    .optional()?
    .ok_or_else(|| api::sku_not_found(sku))
}

/// Holds `quantity` of `sku`: 404 unknown sku, 409 `insufficient_stock`.
pub fn reserve(tx: &Transaction<'_>, sku: &str, quantity: i64, order_id: Option<i64>) -> ApiResult<Reservation> {
    let current = stock(tx, sku)?;
    if current.available < quantity {
        return Err(api::insufficient_stock(sku, current.available, quantity));
    }
    tx.execute(
        "UPDATE stock SET reserved = reserved + ?2 WHERE sku = ?1",
        params![sku, quantity],
    )?;
    let created_at = shop_kit::time::now_rfc3339();
    tx.execute(
        "INSERT INTO reservations (sku, quantity, order_id, created_at) VALUES (?1, ?2, ?3, ?4)",
        params![sku, quantity, order_id, created_at],
    )?;
    Ok(Reservation {
        id: tx.last_insert_rowid(),
        sku: sku.to_string(),
        quantity,
        order_id,
        available: current.available - quantity,
        created_at,
    })
}

/// Gives a reservation's quantity back; 404 if unknown or already released.
pub fn release(tx: &Transaction<'_>, id: i64) -> ApiResult<()> {
    let (sku, quantity): (String, i64) = tx
        .query_row(
            "SELECT sku, quantity FROM reservations WHERE id = ?1 AND released_at IS NULL",
            [id],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()?
        .ok_or_else(|| api::reservation_not_found(id))?;
    tx.execute(
        "UPDATE reservations SET released_at = ?2 WHERE id = ?1",
        params![id, shop_kit::time::now_rfc3339()],
    )?;
    tx.execute(
        "UPDATE stock SET reserved = reserved - ?2 WHERE sku = ?1",
        params![sku, quantity],
    )?;
    Ok(())
}
