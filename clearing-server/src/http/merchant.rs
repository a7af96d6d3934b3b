//! The platform API's merchant-scoped handlers (`/v1/merchants/{merchant_id}/…`): a merchant's key
//! reaches its own, an operator's any; another merchant's is `404` (`crate::core::access`).

use axum::extract::{Path, State};
use axum::http::{StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};

use super::caller::{Caller, Json};
use super::platform::{PeriodQuery, answer, query};
use super::problem::Problem;
use super::{AppState, credential_answer};
use crate::core::clearing::MerchantStatement;

pub(super) async fn merchant(
    State(state): State<AppState>,
    Caller(who): Caller,
    Path(id): Path<String>,
) -> Result<Response, Problem> {
    answer(&state, who, None, move |s| s.merchant(&id)).await
}

pub(super) async fn terminals(
    State(state): State<AppState>,
    Caller(who): Caller,
    Path(id): Path<String>,
) -> Result<Response, Problem> {
    answer(&state, who, Some("terminals"), move |s| s.terminals(&id)).await
}

pub(super) async fn terminal(
    State(state): State<AppState>,
    Caller(who): Caller,
    Path((merchant, terminal)): Path<(String, String)>,
) -> Result<Response, Problem> {
    answer(&state, who, None, move |s| s.terminal(&merchant, &terminal)).await
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PairingBody {
    #[serde(default)]
    pub terminal_id: Option<String>,
    #[serde(default)]
    pub ttl_minutes: Option<u32>,
}

pub(super) async fn create_pairing_code(
    State(state): State<AppState>,
    Caller(who): Caller,
    Path(id): Path<String>,
    Json(b): Json<PairingBody>,
) -> Result<Response, Problem> {
    let c = state
        .as_caller(who, move |s| {
            s.create_pairing_code(&id, b.terminal_id.as_deref(), b.ttl_minutes)
        })
        .await?;
    // The code is a credential until it is used or expires: not for any cache.
    Ok(credential_answer(StatusCode::CREATED, c))
}

pub(super) async fn pairing_codes(
    State(state): State<AppState>,
    Caller(who): Caller,
    Path(id): Path<String>,
) -> Result<Response, Problem> {
    answer(&state, who, Some("pairing_codes"), move |s| {
        s.pairing_codes(&id)
    })
    .await
}

/// A statement with the merchant's name.
#[derive(Serialize)]
struct Statement {
    name: String,
    #[serde(flatten)]
    statement: MerchantStatement,
}

pub(super) async fn statement(
    State(state): State<AppState>,
    Caller(who): Caller,
    Path(id): Path<String>,
    uri: Uri,
) -> Result<Response, Problem> {
    let window = query::<PeriodQuery>(&uri)?.window()?;
    let (statement, name) = state
        .as_caller(who, move |s| s.merchant_statement(&id, window))
        .await?;
    Ok(axum::Json(Statement { name, statement }).into_response())
}

pub(super) async fn daily_statement(
    State(state): State<AppState>,
    Caller(who): Caller,
    Path(id): Path<String>,
    uri: Uri,
) -> Result<Response, Problem> {
    let window = query::<PeriodQuery>(&uri)?.window()?;
    let m = id.clone();
    let days = state
        .as_caller(who, move |s| s.merchant_daily(&m, window))
        .await?;
    Ok(axum::Json(serde_json::json!({ "merchant_id": id, "days": days })).into_response())
}

pub(super) async fn exceptions(
    State(state): State<AppState>,
    Caller(who): Caller,
    Path(id): Path<String>,
) -> Result<Response, Problem> {
    answer(&state, who, None, move |s| s.merchant_exceptions(&id)).await
}
