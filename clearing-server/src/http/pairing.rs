//! The two platform-API routes a shop calls: `POST /v1/enroll` (a pairing code, redeemed by `redeemd
//! enroll`; the code is the credential, throttled by source) and `POST /v1/terminals/{id}/health`
//! (the daemon's health report, signed like every terminal request).

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

use super::AppState;
use super::auth::Authenticated;
use super::caller::{Json, Source, parse, require_json};
use super::problem::Problem;
use crate::service::{enroll, fleet};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnrollBody {
    pub code: String,
}

pub(super) async fn enroll(
    State(state): State<AppState>,
    Source(source): Source,
    Json(b): Json<EnrollBody>,
) -> Result<Response, Problem> {
    let now = (state.clock)();
    let e = state
        .with_db(move |db, vault| enroll::redeem(db, vault, &b.code, &source, now))
        .await?;
    let body = serde_json::json!({
        "terminal_id": e.terminal_id,
        "merchant_id": e.merchant_id,
        "secret": e.secret.as_str(),
    });
    // The secret is in this answer only: never cached by anything in between.
    Ok(super::credential_answer(StatusCode::OK, body))
}

pub(super) async fn health(
    State(state): State<AppState>,
    Authenticated {
        terminal_id,
        headers,
        body,
        ..
    }: Authenticated,
) -> Result<Response, Problem> {
    require_json(&headers).map_err(|p| p.terminal(&terminal_id))?;
    let report = parse(&body).map_err(|p| p.terminal(&terminal_id))?;
    let now = (state.clock)();
    state
        .with_db(move |db, _| fleet::record_health(db, &terminal_id, &report, now))
        .await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}
