//! The inventory service's JSON contract: wire types, input checks, error wording.
//!
//! Owned by this service alone; the monolith and the orders service keep their own, so
//! `tests/shop_contract.rs` sees any drift from the monolith's answers.

use serde::{Deserialize, Serialize};
use shop_kit::ApiError;

/// Largest quantity one reservation may ask for.
pub const MAX_QUANTITY: i64 = 1000;

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

pub fn reservation_not_found(id: i64) -> ApiError {
    ApiError::not_found(format!("no active reservation with id {id}"))
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
}
