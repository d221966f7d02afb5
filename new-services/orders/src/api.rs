//! The orders service's JSON contract: wire types, input checks, error wording.
//!
//! Owned by this service alone; the monolith and the inventory service keep their own (what
//! orders reads back from inventory lives in [`crate::inventory`]), so `tests/shop_contract.rs`
//! sees any drift from the monolith's answers.

use serde::{Deserialize, Serialize};
use shop_kit::ApiError;

/// Largest quantity one order line may ask for.
pub const MAX_QUANTITY: i64 = 1000;
/// Largest number of lines in one order.
pub const MAX_ORDER_LINES: usize = 100;

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

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct UserOrders {
    pub user_id: i64,
    pub items: Vec<Order>,
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

pub fn sku_not_found(sku: &str) -> ApiError {
    ApiError::not_found(format!("no product with sku {sku}"))
}

pub fn user_not_found(id: i64) -> ApiError {
    ApiError::not_found(format!("no user with id {id}"))
}

pub fn order_not_found(id: i64) -> ApiError {
    ApiError::not_found(format!("no order with id {id}"))
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
    fn order_shape() {
        let order = |n: usize| OrderRequest {
            user_id: 1,
            items: vec![
                OrderLineRequest {
                    sku: "SKU-0001".into(),
                    quantity: 1
                };
                n
            ],
        };
        assert_eq!(order(0).validate().unwrap_err().code, "invalid_order");
        assert!(order(1).validate().is_ok());
        assert!(order(MAX_ORDER_LINES).validate().is_ok());
        assert_eq!(order(MAX_ORDER_LINES + 1).validate().unwrap_err().code, "invalid_order");
    }
}
