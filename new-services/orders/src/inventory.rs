//! HTTP client for the inventory service: reserve and release stock for an order.

use std::time::Duration;

use reqwest::StatusCode;
use serde::Deserialize;
use shop_kit::http::REQUEST_ID;
use shop_kit::otel::{Call, Parent};
use shop_kit::ApiError;

use crate::api;

/// Inventory is local and small; waiting longer than this only makes the caller wait too.
const CONNECT_TIMEOUT: Duration = Duration::from_millis(500);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);

/// The part of inventory's `201` reservation answer this client needs; the rest is ignored, so
/// inventory may add fields without breaking orders.
#[derive(Debug, Deserialize)]
struct Reservation {
    id: i64,
}

/// Inventory's `{"error": {"code", "message"}}` body, read back to pass its message on.
#[derive(Debug, Deserialize)]
struct ErrorBody {
    error: ErrorDetail,
}

#[derive(Debug, Deserialize)]
struct ErrorDetail {
    message: String,
}

#[derive(Clone, Debug)]
pub struct InventoryClient {
    http: reqwest::Client,
    base: String,
}

fn unavailable(detail: impl std::fmt::Display) -> ApiError {
    tracing::warn!(%detail, "inventory call failed");
    ApiError::unavailable(
        "inventory_unavailable",
        "the inventory service is unavailable; retry later",
    )
}

impl InventoryClient {
    pub fn new(base: &str) -> anyhow::Result<Self> {
        let http = reqwest::Client::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            .timeout(REQUEST_TIMEOUT)
            .build()?;
        Ok(InventoryClient {
            http,
            base: base.trim_end_matches('/').to_string(),
        })
    }

    /// Reserves `quantity` of `sku`; 409 `insufficient_stock` and 404 carry inventory's message,
    /// anything else is 503 `inventory_unavailable`.
    pub async fn reserve(
        &self,
        sku: &str,
        quantity: i64,
        request_id: &str,
        parent: Option<&Parent>,
    ) -> Result<i64, ApiError> {
        let mut call = Call::start(parent, "POST /api/inventory/{sku}/reservations");
        let mut request = self
            .http
            .post(format!("{}/api/inventory/{sku}/reservations", self.base))
            .header(REQUEST_ID, request_id)
            .json(&serde_json::json!({ "quantity": quantity }));
        if let Some(call) = &call {
            request = request.headers(call.headers());
        }
        let response = request.send().await.map_err(unavailable)?;
        let status = response.status();
        if let Some(call) = call.as_mut() {
            call.status(status.as_u16());
        }
        match status {
            StatusCode::CREATED => {
                let reservation: Reservation = response.json().await.map_err(unavailable)?;
                Ok(reservation.id)
            }
            StatusCode::CONFLICT | StatusCode::NOT_FOUND => {
                let body: ErrorBody = response.json().await.map_err(unavailable)?;
                Err(if status == StatusCode::CONFLICT {
                    ApiError::conflict("insufficient_stock", body.error.message)
                } else {
                    api::sku_not_found(sku)
                })
            }
            other => Err(unavailable(format_args!("reserve {sku}: inventory answered {other}"))),
        }
    }

    /// Best-effort release of reservations already made for a failed order.
    pub async fn release_all(&self, ids: &[i64], request_id: &str, parent: Option<&Parent>) {
        for id in ids {
            let call = Call::start(parent, "DELETE /api/inventory/reservations/{id}");
            let mut request = self
                .http
                .delete(format!("{}/api/inventory/reservations/{id}", self.base))
                .header(REQUEST_ID, request_id);
            if let Some(call) = &call {
                request = request.headers(call.headers());
            }
            let result = request.send().await;
            match result {
                Ok(r) if r.status().is_success() => {}
                Ok(r) => tracing::warn!(id, status = %r.status(), "releasing reservation failed"),
                Err(err) => tracing::warn!(id, %err, "releasing reservation failed; it stays held"),
            }
        }
    }
}
