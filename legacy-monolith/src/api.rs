//! The monolith's JSON contract: wire types, input checks, error wording.
//!
//! The extracted services keep their own copies on purpose, as a separate team would: nothing
//! here is shared with them, so a drift on either side shows up in `tests/shop_contract.rs`.

use serde::{Deserialize, Serialize};
use shop_kit::ApiError;

/// Largest quantity one reservation or order line may ask for.
pub const MAX_QUANTITY: i64 = 1000;
/// Largest number of lines in one order.
pub const MAX_ORDER_LINES: usize = 100;

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Product {
    pub id: i64,
    pub sku: String,
    pub name: String,
    pub category: String,
    pub price_cents: i64,
    pub description: String,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ProductPage {
    pub items: Vec<Product>,
    pub page: i64,
    pub per_page: i64,
    pub total: i64,
}

/// `?page=1&per_page=20`, both optional.
#[derive(Debug, Clone, Deserialize)]
pub struct PageQuery {
    pub page: Option<i64>,
    pub per_page: Option<i64>,
}

impl PageQuery {
    /// `(page, per_page)` after defaults and range checks (page >= 1, per_page 1..=100).
    pub fn resolve(&self) -> Result<(i64, i64), ApiError> {
        let page = self.page.unwrap_or(1);
        let per_page = self.per_page.unwrap_or(20);
        if page < 1 {
            return Err(ApiError::bad_query("page must be 1 or more"));
        }
        if !(1..=100).contains(&per_page) {
            return Err(ApiError::bad_query("per_page must be between 1 and 100"));
        }
        Ok((page, per_page))
    }
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Stock {
    pub sku: String,
    pub on_hand: i64,
    pub reserved: i64,
    pub available: i64,
}

#[derive(Debug, Clone, Deserialize)]
pub struct ReservationRequest {
    pub quantity: i64,
    #[serde(default)]
    pub order_id: Option<i64>,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Reservation {
    pub id: i64,
    pub sku: String,
    pub quantity: i64,
    pub order_id: Option<i64>,
    /// Stock still available for the sku right after this reservation.
    pub available: i64,
    pub created_at: String,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Released {
    pub id: i64,
    pub released: bool,
}

#[derive(Debug, Clone, Deserialize)]
pub struct OrderLineRequest {
    pub sku: String,
    pub quantity: i64,
}

#[derive(Debug, Clone, Deserialize)]
pub struct OrderRequest {
    pub user_id: i64,
    pub items: Vec<OrderLineRequest>,
}

impl OrderRequest {
    /// Shape checks that need no database: 422 `invalid_order` / `invalid_quantity`.
    pub fn validate(&self) -> Result<(), ApiError> {
        if self.items.is_empty() {
            return Err(ApiError::unprocessable(
                "invalid_order",
                "an order needs at least one item",
            ));
        }
        if self.items.len() > MAX_ORDER_LINES {
            return Err(ApiError::unprocessable(
                "invalid_order",
                "an order may have at most 100 items",
            ));
        }
        self.items.iter().try_for_each(|line| validate_quantity(line.quantity))
    }
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct OrderLine {
    pub sku: String,
    pub name: String,
    pub quantity: i64,
    pub unit_price_cents: i64,
    pub line_total_cents: i64,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Order {
    pub id: i64,
    pub user_id: i64,
    pub status: String,
    pub items: Vec<OrderLine>,
    pub total_cents: i64,
    pub created_at: String,
}

/// `GET /api/orders/{id}/details`: an order, its payment (null until paid) and the stock of its
/// SKUs, in the order of its lines.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct OrderDetails {
    pub order: Order,
    pub payment: Option<Payment>,
    pub stock: Vec<Stock>,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct UserOrders {
    pub user_id: i64,
    pub items: Vec<Order>,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct User {
    pub id: i64,
    pub name: String,
    pub email: String,
    pub created_at: String,
}

#[derive(Debug, Clone, Deserialize)]
pub struct PaymentRequest {
    pub order_id: i64,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Payment {
    pub id: i64,
    pub order_id: i64,
    pub amount_cents: i64,
    pub status: String,
    pub created_at: String,
}

/// 422 `invalid_quantity` unless `1..=1000`.
pub fn validate_quantity(quantity: i64) -> Result<(), ApiError> {
    if (1..=MAX_QUANTITY).contains(&quantity) {
        Ok(())
    } else {
        Err(ApiError::unprocessable(
            "invalid_quantity",
            format!("quantity must be between 1 and 1000, got {quantity}"),
        ))
    }
}

pub fn insufficient_stock(sku: &str, available: i64, requested: i64) -> ApiError {
    ApiError::conflict(
        "insufficient_stock",
        format!("not enough stock for {sku}: {available} available, {requested} requested"),
    )
}

pub fn sku_not_found(sku: &str) -> ApiError {
    ApiError::not_found(format!("no product with sku {sku}"))
}

pub fn product_not_found(id: i64) -> ApiError {
    ApiError::not_found(format!("no product with id {id}"))
}

pub fn user_not_found(id: i64) -> ApiError {
    ApiError::not_found(format!("no user with id {id}"))
}

pub fn order_not_found(id: i64) -> ApiError {
    ApiError::not_found(format!("no order with id {id}"))
}

pub fn reservation_not_found(id: i64) -> ApiError {
    ApiError::not_found(format!("no active reservation with id {id}"))
}

pub fn payment_not_found(order_id: i64) -> ApiError {
    ApiError::not_found(format!("no payment for order {order_id}"))
}

pub fn already_paid(order_id: i64) -> ApiError {
    ApiError::conflict("already_paid", format!("order {order_id} is already paid"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantity_bounds() {
        for (q, ok) in [(-1, false), (0, false), (1, true), (1000, true), (1001, false)] {
            assert_eq!(validate_quantity(q).is_ok(), ok, "quantity {q}");
        }
    }

    #[test]
    fn page_query_bounds() {
        let q = |page, per_page| PageQuery { page, per_page }.resolve();
        assert_eq!(q(None, None), Ok((1, 20)));
        assert_eq!(q(Some(3), Some(100)), Ok((3, 100)));
        assert!(q(Some(0), None).is_err());
        assert!(q(None, Some(0)).is_err());
        assert!(q(None, Some(101)).is_err());
    }
}
