//! Fault injection for the extracted services: error rate, latency, refusing connections, drift.
//!
//! A [`Faults`] handle is shared by the server and whoever wants to break it (CLI flags, an
//! in-process test, or `POST /_faults` from loopback). Changes apply to the next request.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ConnectInfo;
use axum::http::{Extensions, StatusCode};
use axum::routing::get;
use axum::Router;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::error::{ApiError, ApiResult};
use crate::extract::Json;

/// Longest `refuse_for_ms` accepted over HTTP, so a typo can't take a service down for a day.
const MAX_REFUSE: Duration = Duration::from_secs(600);

/// What to break. `Default` breaks nothing.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FaultSettings {
    /// Fraction (0.0..=1.0) of requests answered 503 `injected_fault`.
    pub error_rate: f64,
    /// Delay added before each request is handled.
    pub latency: Duration,
    /// While true the server holds no listening socket: connects get ECONNREFUSED.
    pub refuse: bool,
    /// Overwrite one field of every JSON object response.
    pub drift: Option<Drift>,
}

/// Sets `field` (top-level name or dotted path like `items.0.quantity`) to `value`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Drift {
    pub field: String,
    pub value: serde_json::Value,
}

impl std::str::FromStr for Drift {
    type Err = String;

    /// `FIELD=JSONVALUE`; a value that is not JSON is taken as a string (`status=lost`).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (field, raw) = s
            .split_once('=')
            .ok_or_else(|| format!("drift {s:?}: expected FIELD=JSONVALUE, e.g. available=999"))?;
        if field.is_empty() {
            return Err(format!("drift {s:?}: the field name is empty"));
        }
        let value = serde_json::from_str(raw).unwrap_or_else(|_| serde_json::Value::String(raw.to_string()));
        Ok(Drift {
            field: field.to_string(),
            value,
        })
    }
}

impl Drift {
    /// Applies the drift to `body` if the path exists (or is a new top-level field).
    pub fn apply(&self, body: &mut serde_json::Value) {
        let mut parts = self.field.split('.').peekable();
        let mut node = body;
        while let Some(part) = parts.next() {
            let last = parts.peek().is_none();
            let next = match node {
                serde_json::Value::Object(map) if last => {
                    map.insert(part.to_string(), self.value.clone());
                    return;
                }
                serde_json::Value::Object(map) => map.get_mut(part),
                serde_json::Value::Array(items) => part.parse::<usize>().ok().and_then(|i| items.get_mut(i)),
                _ => None,
            };
            match next {
                Some(child) if last => {
                    *child = self.value.clone();
                    return;
                }
                Some(child) => node = child,
                None => return,
            }
        }
    }
}

/// Cheap-clone handle to the live fault settings.
#[derive(Clone, Debug)]
pub struct Faults {
    tx: Arc<watch::Sender<FaultSettings>>,
    /// Bumped by every change, so a pending `refuse_for` timer knows it was superseded.
    generation: Arc<AtomicU64>,
    /// Whether the server currently holds its listening socket (set by [`crate::serve`]).
    listening: Arc<watch::Sender<bool>>,
    /// Requests that reached the service (not `/healthz` or `/_faults`), faulted or not.
    requests: Arc<AtomicU64>,
}

impl Default for Faults {
    fn default() -> Self {
        Faults::new(FaultSettings::default())
    }
}

impl Faults {
    pub fn new(settings: FaultSettings) -> Self {
        Faults {
            tx: Arc::new(watch::Sender::new(settings)),
            generation: Arc::new(AtomicU64::new(0)),
            listening: Arc::new(watch::Sender::new(false)),
            requests: Arc::new(AtomicU64::new(0)),
        }
    }

    /// How many requests reached the service so far (a test checks that an open circuit sends none).
    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::SeqCst)
    }

    pub(crate) fn count_request(&self) {
        self.requests.fetch_add(1, Ordering::SeqCst);
    }

    /// A copy of the current settings.
    pub fn get(&self) -> FaultSettings {
        self.tx.borrow().clone()
    }

    /// Replaces all settings (and cancels a pending `refuse_for` timer).
    pub fn set(&self, settings: FaultSettings) {
        self.generation.fetch_add(1, Ordering::SeqCst);
        self.tx.send_replace(settings);
    }

    /// Back to no faults.
    pub fn reset(&self) {
        self.set(FaultSettings::default());
    }

    /// Refuses connections now and accepts them again after `duration`, unless another change
    /// came in between. Needs a tokio runtime.
    pub fn refuse_for(&self, duration: Duration) {
        let mut settings = self.get();
        settings.refuse = true;
        self.set(settings);
        let generation = self.generation.load(Ordering::SeqCst);
        let faults = self.clone();
        tokio::spawn(async move {
            tokio::time::sleep(duration).await;
            if faults.generation.load(Ordering::SeqCst) == generation {
                let mut settings = faults.get();
                settings.refuse = false;
                faults.set(settings);
            }
        });
    }

    /// Watches changes (the server uses this to drop and re-bind its listener).
    pub fn subscribe(&self) -> watch::Receiver<FaultSettings> {
        self.tx.subscribe()
    }

    /// Waits until the server has (`true`) or has dropped (`false`) its listening socket, so a
    /// test can tell when a `refuse` change took effect without sleeping.
    pub async fn until_listening(&self, listening: bool) {
        let mut rx = self.listening.subscribe();
        let _ = rx.wait_for(|now| *now == listening).await;
    }

    pub(crate) fn mark_listening(&self, listening: bool) {
        self.listening.send_replace(listening);
    }

    /// Rolls the dice for one request.
    pub(crate) fn should_fail(error_rate: f64) -> bool {
        error_rate > 0.0 && rand::random::<f64>() < error_rate
    }
}

/// `GET /_faults` answer.
#[derive(Debug, Serialize)]
struct FaultView {
    error_rate: f64,
    latency_ms: u64,
    refuse: bool,
    drift: Option<Drift>,
}

impl From<FaultSettings> for FaultView {
    fn from(s: FaultSettings) -> Self {
        FaultView {
            error_rate: s.error_rate,
            latency_ms: s.latency.as_millis() as u64,
            refuse: s.refuse,
            drift: s.drift,
        }
    }
}

/// `POST /_faults` body; every field optional, absent fields keep their value.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FaultUpdate {
    #[serde(default)]
    reset: bool,
    error_rate: Option<f64>,
    latency_ms: Option<u64>,
    refuse_for_ms: Option<u64>,
    /// `null` clears the drift.
    #[serde(default, deserialize_with = "present")]
    drift: Option<Option<Drift>>,
}

/// Tells `"drift": null` (clear) apart from no `drift` key (keep).
fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Option<Drift>>, D::Error> {
    Option::<Drift>::deserialize(d).map(Some)
}

/// The `/_faults` routes (loopback peers only).
pub fn routes(faults: Faults) -> Router {
    Router::new()
        .route("/_faults", get(show).post(update))
        .with_state(faults)
}

fn require_loopback(extensions: &Extensions) -> ApiResult<()> {
    match extensions.get::<ConnectInfo<SocketAddr>>() {
        Some(ConnectInfo(peer)) if peer.ip().is_loopback() => Ok(()),
        _ => Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            "/_faults only accepts requests from loopback",
        )),
    }
}

async fn show(
    axum::extract::State(faults): axum::extract::State<Faults>,
    extensions: Extensions,
) -> ApiResult<axum::Json<FaultView>> {
    require_loopback(&extensions)?;
    Ok(axum::Json(faults.get().into()))
}

async fn update(
    axum::extract::State(faults): axum::extract::State<Faults>,
    extensions: Extensions,
    Json(update): Json<FaultUpdate>,
) -> ApiResult<axum::Json<FaultView>> {
    require_loopback(&extensions)?;
    if let Some(rate) = update.error_rate {
        if !(0.0..=1.0).contains(&rate) {
            return Err(ApiError::unprocessable(
                "invalid_fault",
                "error_rate must be between 0.0 and 1.0",
            ));
        }
    }
    let refuse_for = update.refuse_for_ms.map(Duration::from_millis);
    if refuse_for.is_some_and(|d| d > MAX_REFUSE) {
        return Err(ApiError::unprocessable(
            "invalid_fault",
            "refuse_for_ms must be at most 600000",
        ));
    }
    let mut settings = if update.reset {
        FaultSettings::default()
    } else {
        faults.get()
    };
    if let Some(rate) = update.error_rate {
        settings.error_rate = rate;
    }
    if let Some(ms) = update.latency_ms {
        settings.latency = Duration::from_millis(ms);
    }
    if let Some(drift) = update.drift {
        settings.drift = drift;
    }
    faults.set(settings);
    if let Some(duration) = refuse_for {
        // The answer still goes out on this connection; new connects are refused from now on.
        faults.refuse_for(duration);
    }
    Ok(axum::Json(faults.get().into()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn drift_parses_and_applies() {
        let cases = [
            ("available=999", json!({"available": 1}), json!({"available": 999})),
            ("status=lost", json!({"status": "paid"}), json!({"status": "lost"})),
            (
                "items.0.quantity=7",
                json!({"items": [{"quantity": 1}, {"quantity": 2}]}),
                json!({"items": [{"quantity": 7}, {"quantity": 2}]}),
            ),
            ("items.5.quantity=7", json!({"items": []}), json!({"items": []})),
            ("extra=true", json!({}), json!({"extra": true})),
        ];
        for (spec, mut body, want) in cases {
            let drift: Drift = spec.parse().expect("valid drift");
            drift.apply(&mut body);
            assert_eq!(body, want, "{spec}");
        }
        assert!("novalue".parse::<Drift>().is_err());
        assert!("=1".parse::<Drift>().is_err());
    }

    #[tokio::test(start_paused = true)]
    async fn refuse_for_clears_itself_unless_superseded() {
        let faults = Faults::default();
        faults.refuse_for(Duration::from_millis(100));
        assert!(faults.get().refuse);
        tokio::time::sleep(Duration::from_millis(150)).await;
        assert!(!faults.get().refuse);

        faults.refuse_for(Duration::from_millis(100));
        faults.set(FaultSettings {
            refuse: true,
            ..FaultSettings::default()
        });
        tokio::time::sleep(Duration::from_millis(150)).await;
        assert!(faults.get().refuse, "a later set() wins over the old timer");
    }
}
