//! The monolith's one database: schema, seeding, and every query the handlers run.

use rusqlite::{params, Connection, OptionalExtension, Transaction};
use shop_kit::ApiResult;

use crate::api::{self, Order, OrderLine, Payment, Product, Reservation, Stock, User};

pub const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS products (
    id INTEGER PRIMARY KEY,
    sku TEXT NOT NULL UNIQUE,
    name TEXT NOT NULL,
    category TEXT NOT NULL,
    price_cents INTEGER NOT NULL,
    description TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS stock (
    sku TEXT PRIMARY KEY REFERENCES products(sku),
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
CREATE TABLE IF NOT EXISTS users (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL,
    email TEXT NOT NULL UNIQUE,
    created_at TEXT NOT NULL
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
CREATE TABLE IF NOT EXISTS payments (
    id INTEGER PRIMARY KEY,
    order_id INTEGER NOT NULL UNIQUE REFERENCES orders(id),
    amount_cents INTEGER NOT NULL,
    status TEXT NOT NULL,
    created_at TEXT NOT NULL
);
";

pub fn is_empty(conn: &Connection) -> rusqlite::Result<bool> {
    shop_kit::db::table_is_empty(conn, "products")
}

/// Loads the whole shared seed: the monolith owns every table.
pub fn seed(tx: &Transaction<'_>) -> rusqlite::Result<()> {
    let seed = shop_kit::seed::generate();
    for p in &seed.products {
        tx.execute(
            "INSERT INTO products (id, sku, name, category, price_cents, description)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![p.id, p.sku, p.name, p.category, p.price_cents, p.description],
        )?;
    }
    for s in &seed.stock {
        tx.execute(
            "INSERT INTO stock (sku, on_hand) VALUES (?1, ?2)",
            params![s.sku, s.on_hand],
        )?;
    }
    for u in &seed.users {
        tx.execute(
            "INSERT INTO users (id, name, email, created_at) VALUES (?1, ?2, ?3, ?4)",
            params![u.id, u.name, u.email, u.created_at],
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
    for p in &seed.payments {
        tx.execute(
            "INSERT INTO payments (id, order_id, amount_cents, status, created_at)
             VALUES (?1, ?2, ?3, 'captured', ?4)",
            params![p.id, p.order_id, p.amount_cents, p.created_at],
        )?;
    }
    Ok(())
}

const PRODUCT_COLUMNS: &str = "id, sku, name, category, price_cents, description";

fn product_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<Product> {
    Ok(Product {
        id: row.get(0)?,
        sku: row.get(1)?,
        name: row.get(2)?,
        category: row.get(3)?,
        price_cents: row.get(4)?,
        description: row.get(5)?,
    })
}

/// One page of products by id, plus the total count.
pub fn products(conn: &Connection, page: i64, per_page: i64) -> ApiResult<(Vec<Product>, i64)> {
    let total: i64 = conn.query_row("SELECT COUNT(*) FROM products", [], |r| r.get(0))?;
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {PRODUCT_COLUMNS} FROM products ORDER BY id LIMIT ?1 OFFSET ?2"
    ))?;
    let offset = (page - 1).saturating_mul(per_page);
    let items = stmt
        .query_map(params![per_page, offset], product_row)?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    Ok((items, total))
}

pub fn product(conn: &Connection, id: i64) -> ApiResult<Product> {
    conn.query_row(
        &format!("SELECT {PRODUCT_COLUMNS} FROM products WHERE id = ?1"),
        [id],
        product_row,
    )
    .optional()?
    .ok_or_else(|| api::product_not_found(id))
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

pub fn user(conn: &Connection, id: i64) -> ApiResult<User> {
    conn.query_row(
        "SELECT id, name, email, created_at FROM users WHERE id = ?1",
        [id],
        |r| {
            Ok(User {
                id: r.get(0)?,
                name: r.get(1)?,
                email: r.get(2)?,
                created_at: r.get(3)?,
            })
        },
    )
    .optional()?
    .ok_or_else(|| api::user_not_found(id))
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
    user(conn, user_id)?;
    let ids = conn
        .prepare_cached("SELECT id FROM orders WHERE user_id = ?1 ORDER BY id")?
        .query_map([user_id], |r| r.get::<_, i64>(0))?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    ids.into_iter().map(|id| order(conn, id)).collect()
}

/// Places an order: checks user and skus, reserves every line, writes the order. The caller's
/// transaction makes it all or nothing.
pub fn create_order(tx: &Transaction<'_>, request: &api::OrderRequest) -> ApiResult<Order> {
    user(tx, request.user_id)?;
    let mut lines = Vec::with_capacity(request.items.len());
    for item in &request.items {
        let (name, price): (String, i64) = tx
            .query_row(
                "SELECT name, price_cents FROM products WHERE sku = ?1",
                [&item.sku],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?
            .ok_or_else(|| api::sku_not_found(&item.sku))?;
        lines.push(OrderLine {
            sku: item.sku.clone(),
            name,
            quantity: item.quantity,
            unit_price_cents: price,
            line_total_cents: item.quantity * price,
        });
    }
    let mut reservations = Vec::with_capacity(lines.len());
    for line in &lines {
        reservations.push(reserve(tx, &line.sku, line.quantity, None)?.id);
    }
    let total_cents = lines.iter().map(|l| l.line_total_cents).sum();
    let created_at = shop_kit::time::now_rfc3339();
    tx.execute(
        "INSERT INTO orders (user_id, status, total_cents, created_at) VALUES (?1, 'pending', ?2, ?3)",
        params![request.user_id, total_cents, created_at],
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
    for reservation in reservations {
        tx.execute(
            "UPDATE reservations SET order_id = ?1 WHERE id = ?2",
            params![id, reservation],
        )?;
    }
    Ok(Order {
        id,
        user_id: request.user_id,
        status: "pending".to_string(),
        items: lines,
        total_cents,
        created_at,
    })
}

/// Captures the order's total; the UNIQUE(order_id) constraint makes a second payment 409.
pub fn pay(tx: &Transaction<'_>, order_id: i64) -> ApiResult<Payment> {
    let order = order(tx, order_id)?;
    let created_at = shop_kit::time::now_rfc3339();
    let inserted = tx.execute(
        "INSERT INTO payments (order_id, amount_cents, status, created_at)
         VALUES (?1, ?2, 'captured', ?3)",
        params![order_id, order.total_cents, created_at],
    );
    match inserted {
        Ok(_) => {}
        Err(err) if shop_kit::db::is_unique_violation(&err) => return Err(api::already_paid(order_id)),
        Err(err) => return Err(err.into()),
    }
    let id = tx.last_insert_rowid();
    tx.execute("UPDATE orders SET status = 'paid' WHERE id = ?1", [order_id])?;
    Ok(Payment {
        id,
        order_id,
        amount_cents: order.total_cents,
        status: "captured".to_string(),
        created_at,
    })
}

pub fn payment_for(conn: &Connection, order_id: i64) -> ApiResult<Payment> {
    conn.query_row(
        "SELECT id, order_id, amount_cents, status, created_at FROM payments WHERE order_id = ?1",
        [order_id],
        |r| {
            Ok(Payment {
                id: r.get(0)?,
                order_id: r.get(1)?,
                amount_cents: r.get(2)?,
                status: r.get(3)?,
                created_at: r.get(4)?,
            })
        },
    )
    .optional()?
    .ok_or_else(|| api::payment_not_found(order_id))
}
