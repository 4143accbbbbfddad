//! Bearer tokens and per-token rate limits. A request's token is looked up (SHA-256 at
//! rest), must grant the endpoint's scope, and then draws from that token's bucket.

use std::num::NonZeroU32;
use std::sync::Arc;

use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::Response;
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota};
use idem_store::tokens::{self, Scope, TokenInfo};

use crate::problem::{problem, unavailable};
use crate::ApiState;

/// Requests per second each token may make, with a burst allowance. Kept in this process's
/// memory: N `serve` replicas allow N× (a shared limiter in PostgreSQL would write on every
/// request); a fleet-wide cap belongs at the load balancer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimit {
    pub per_second: NonZeroU32,
    pub burst: NonZeroU32,
}

impl Default for RateLimit {
    /// 50 requests per second with bursts of 100: far above one agent's pace, low enough
    /// that a runaway loop is stopped before it floods the store.
    fn default() -> Self {
        Self {
            per_second: NonZeroU32::new(50).expect("non-zero"),
            burst: NonZeroU32::new(100).expect("non-zero"),
        }
    }
}

/// One bucket per token id.
#[derive(Debug, Clone)]
pub(crate) struct Limiter(Arc<DefaultKeyedRateLimiter<uuid::Uuid>>);

impl Limiter {
    pub(crate) fn new(limit: RateLimit) -> Self {
        let quota = Quota::per_second(limit.per_second).allow_burst(limit.burst);
        Self(Arc::new(DefaultKeyedRateLimiter::keyed(quota)))
    }

    /// `Err(wait)` when the token's bucket is empty.
    fn check(&self, token: uuid::Uuid) -> Result<(), std::time::Duration> {
        self.0
            .check_key(&token)
            .map_err(|not_until| not_until.wait_time_from(DefaultClock::default().now()))
    }
}

/// The caller's token if it grants `scope` and has budget left; else the 401, 403 or 429.
pub(crate) async fn authorize(
    state: &ApiState,
    headers: &HeaderMap,
    scope: Scope,
) -> Result<TokenInfo, Response> {
    authorize_secret(state, bearer(headers), scope).await
}

/// As [`authorize`], for a secret from elsewhere (the console's cookie).
pub(crate) async fn authorize_secret(
    state: &ApiState,
    secret: Option<&str>,
    scope: Scope,
) -> Result<TokenInfo, Response> {
    let Some(secret) = secret else {
        return Err(problem(StatusCode::UNAUTHORIZED, "missing bearer token"));
    };
    let token = match tokens::authenticate(state.store.pool(), secret).await {
        Ok(Some(t)) => t,
        Ok(None) => {
            return Err(problem(
                StatusCode::UNAUTHORIZED,
                "invalid or revoked token",
            ))
        }
        Err(e) => return Err(unavailable("token lookup", e)),
    };
    if !token.allows(scope) {
        return Err(problem(
            StatusCode::FORBIDDEN,
            format!("token {} lacks the {} scope", token.name, scope.as_str()),
        ));
    }
    if let Err(wait) = state.limiter.check(token.id) {
        let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
        let mut r = problem(
            StatusCode::TOO_MANY_REQUESTS,
            format!(
                "token {} is over its rate limit; retry after {secs} s",
                token.name
            ),
        );
        r.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(secs.max(1)));
        return Err(r);
    }
    Ok(token)
}

/// The bearer secret from `Authorization`.
pub(crate) fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .filter(|s| !s.is_empty())
}
