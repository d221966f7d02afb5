//! Extractors whose rejections are clean JSON 4xx errors instead of axum's plain text.

use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::StatusCode;
use serde::de::DeserializeOwned;

use crate::error::ApiError;

/// JSON body: 400 `bad_json`, 415 `unsupported_media_type`, 413 `body_too_large`.
pub struct Json<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for Json<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        // Parse to a tree first so only a JSON object is accepted (serde would also take an
        // array as a struct's fields in order).
        let value = match axum::Json::<serde_json::Value>::from_request(req, state).await {
            Ok(axum::Json(value)) => value,
            Err(rejection) => return Err(json_rejection(rejection)),
        };
        if !value.is_object() {
            return Err(ApiError::bad_json("body must be a JSON object"));
        }
        serde_json::from_value(value)
            .map(Json)
            .map_err(|err| ApiError::bad_json(format!("body has the wrong shape: {err}")))
    }
}

fn json_rejection(rejection: JsonRejection) -> ApiError {
    match rejection {
        JsonRejection::MissingJsonContentType(_) => ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "send the body as JSON with content-type: application/json",
        ),
        JsonRejection::JsonDataError(err) => {
            ApiError::bad_json(format!("body has the wrong shape: {}", err.body_text()))
        }
        JsonRejection::JsonSyntaxError(err) => {
            ApiError::bad_json(format!("body is not valid JSON: {}", err.body_text()))
        }
        other if other.status() == StatusCode::PAYLOAD_TOO_LARGE => body_too_large(),
        other => ApiError::bad_json(format!("could not read the body: {}", other.body_text())),
    }
}

/// The 413 answer for bodies over [`crate::http::BODY_LIMIT`].
pub fn body_too_large() -> ApiError {
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "body_too_large",
        "request body is over 64 KiB; send a smaller body",
    )
}

/// Path parameters: 400 `bad_id` when a segment does not parse (e.g. a non-numeric id).
pub struct Path<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned + Send> FromRequestParts<S> for Path<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        match axum::extract::Path::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Path(value)) => Ok(Path(value)),
            Err(PathRejection::FailedToDeserializePathParams(_)) => Err(ApiError::bad_id(
                "the id in the path must be a whole number, e.g. /api/orders/7",
            )),
            Err(other) => Err(ApiError::internal(other.body_text())),
        }
    }
}

/// Query string: 400 `bad_query` when a parameter does not parse.
pub struct Query<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for Query<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        match axum::extract::Query::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Query(value)) => Ok(Query(value)),
            Err(QueryRejection::FailedToDeserializeQueryString(err)) => Err(ApiError::bad_query(format!(
                "bad query parameters: {}",
                err.body_text()
            ))),
            Err(other) => Err(ApiError::bad_query(other.body_text())),
        }
    }
}
