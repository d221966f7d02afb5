//! May a failed request on the new service be retried or sent to the monolith? (pure)
//!
//! A request that never reached the service (connect error, open circuit, full bulkhead) may
//! always go elsewhere. One that may have reached it goes elsewhere only if sending it twice is
//! safe: an idempotent method, an `Idempotency-Key`, or `fallback_writes: true`, and the whole
//! body still held for replay.

use http::Method;

/// Why a request fell back; the `reason` label of `strangler_fallbacks_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    ConnectError,
    Timeout,
    Status5xx,
    Reset,
    CircuitOpen,
    Overloaded,
    /// The route's `rate_limit:` for its new side was used up.
    RateLimited,
    /// A required part of a composed answer failed.
    PartFailed,
}

impl Reason {
    pub const ALL: [Reason; 8] = [
        Reason::ConnectError,
        Reason::Timeout,
        Reason::Status5xx,
        Reason::Reset,
        Reason::CircuitOpen,
        Reason::Overloaded,
        Reason::RateLimited,
        Reason::PartFailed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Reason::ConnectError => "connect_error",
            Reason::Timeout => "timeout",
            Reason::Status5xx => "status_5xx",
            Reason::Reset => "reset",
            Reason::CircuitOpen => "circuit_open",
            Reason::Overloaded => "overloaded",
            Reason::RateLimited => "rate_limited",
            Reason::PartFailed => "part_failed",
        }
    }

    /// True when the request can't have reached the service.
    pub fn never_reached(self) -> bool {
        matches!(
            self,
            Reason::ConnectError | Reason::CircuitOpen | Reason::Overloaded | Reason::RateLimited | Reason::PartFailed
        )
    }
}

/// Why a fallback that was wanted did not happen; the `reason` of `strangler_fallbacks_skipped_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SkipReason {
    NotIdempotent,
    BodyTooLarge,
}

impl SkipReason {
    pub const ALL: [SkipReason; 2] = [SkipReason::NotIdempotent, SkipReason::BodyTooLarge];

    pub fn as_str(self) -> &'static str {
        match self {
            SkipReason::NotIdempotent => "not_idempotent",
            SkipReason::BodyTooLarge => "body_too_large",
        }
    }
}

/// GET, HEAD, OPTIONS, PUT, DELETE (and TRACE) may be sent twice.
pub fn idempotent_method(m: &Method) -> bool {
    matches!(
        *m,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::PUT | Method::DELETE | Method::TRACE
    )
}

/// What is known about the request when it fails.
#[derive(Debug, Clone, Copy)]
pub struct Request {
    /// Idempotent method, `Idempotency-Key`, or `fallback_writes: true`.
    pub replayable: bool,
    /// Pingora's 64 KiB replay buffer overflowed.
    pub body_truncated: bool,
    /// Tries of the service so far, including this one.
    pub attempt: u32,
}

/// The route's and upstream's settings that bear on the decision.
#[derive(Debug, Clone, Copy)]
pub struct Policy {
    pub attempts: u32,
    pub fallback: bool,
    /// False once the route's deadline leaves no room for another try.
    pub time_left: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Try the same service again (after a backoff).
    Retry,
    Fallback(Reason),
    /// The client gets the service's answer or a 502/504; `Some` counts a wanted fallback that was unsafe.
    GiveUp(Option<SkipReason>),
}

pub fn decide(reason: Reason, req: Request, policy: Policy) -> Decision {
    if !reason.never_reached() {
        if req.body_truncated {
            return Decision::GiveUp(policy.fallback.then_some(SkipReason::BodyTooLarge));
        }
        if !req.replayable {
            return Decision::GiveUp(policy.fallback.then_some(SkipReason::NotIdempotent));
        }
    }
    let retryable = !matches!(reason, Reason::CircuitOpen | Reason::Overloaded);
    if retryable && req.attempt < policy.attempts && policy.time_left {
        return Decision::Retry;
    }
    if policy.fallback && policy.time_left {
        Decision::Fallback(reason)
    } else {
        Decision::GiveUp(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Decision::*;
    use Reason::*;

    #[test]
    fn decisions() {
        let req = |replayable, body_truncated, attempt| Request {
            replayable,
            body_truncated,
            attempt,
        };
        let pol = |attempts, fallback, time_left| Policy {
            attempts,
            fallback,
            time_left,
        };
        let cases = [
            // never reached: always goes elsewhere, whatever the method or body
            (
                ConnectError,
                req(false, true, 1),
                pol(1, true, true),
                Fallback(ConnectError),
            ),
            (ConnectError, req(false, false, 1), pol(2, true, true), Retry),
            (
                ConnectError,
                req(true, false, 2),
                pol(2, true, true),
                Fallback(ConnectError),
            ),
            (
                CircuitOpen,
                req(false, false, 0),
                pol(3, true, true),
                Fallback(CircuitOpen),
            ),
            (
                Overloaded,
                req(true, false, 0),
                pol(3, true, true),
                Fallback(Overloaded),
            ),
            // may have reached: only when safe to send twice
            (Status5xx, req(true, false, 1), pol(1, true, true), Fallback(Status5xx)),
            (Timeout, req(true, false, 1), pol(2, true, true), Retry),
            (Reset, req(true, false, 2), pol(2, true, true), Fallback(Reset)),
            (
                Status5xx,
                req(false, false, 1),
                pol(3, true, true),
                GiveUp(Some(SkipReason::NotIdempotent)),
            ),
            (
                Timeout,
                req(true, true, 1),
                pol(3, true, true),
                GiveUp(Some(SkipReason::BodyTooLarge)),
            ),
            // fallback off
            (ConnectError, req(true, false, 1), pol(1, false, true), GiveUp(None)),
            (Status5xx, req(false, false, 1), pol(1, false, true), GiveUp(None)),
            (Timeout, req(true, false, 1), pol(2, false, true), Retry),
            // no time left
            (Timeout, req(true, false, 1), pol(3, true, false), GiveUp(None)),
        ];
        for (reason, r, p, want) in cases {
            assert_eq!(decide(reason, r, p), want, "{reason:?} {r:?} {p:?}");
        }
    }

    #[test]
    fn idempotent_methods() {
        for m in [Method::GET, Method::HEAD, Method::OPTIONS, Method::PUT, Method::DELETE] {
            assert!(idempotent_method(&m), "{m}");
        }
        for m in [Method::POST, Method::PATCH, Method::CONNECT] {
            assert!(!idempotent_method(&m), "{m}");
        }
    }
}
