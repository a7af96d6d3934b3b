//! The platform API's member-app handlers (`/v1/member/cards/{handle}/…`): the member app's key acting
//! for the card a grant gave it; any other handle is `404` (`crate::service::member`).

use axum::extract::{Path, State};
use axum::http::Uri;
use axum::response::Response;
use serde::Deserialize;

use super::AppState;
use super::caller::{Caller, Json};
use super::platform::{PeriodQuery, answer, query};
use super::problem::Problem;

pub(super) async fn card(
    State(state): State<AppState>,
    Caller(who): Caller,
    Path(handle): Path<String>,
) -> Result<Response, Problem> {
    answer(&state, who, None, move |s| s.member_card(&handle)).await
}

pub(super) async fn usage(
    State(state): State<AppState>,
    Caller(who): Caller,
    Path(handle): Path<String>,
    uri: Uri,
) -> Result<Response, Problem> {
    let window = query::<PeriodQuery>(&uri)?.window()?;
    answer(&state, who, None, move |s| s.member_usage(&handle, window)).await
}

pub(super) async fn report_lost(
    State(state): State<AppState>,
    Caller(who): Caller,
    Path(handle): Path<String>,
) -> Result<Response, Problem> {
    answer(&state, who, None, move |s| s.member_report_lost(&handle)).await
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CustomizeBody {
    pub offer_id: String,
}

pub(super) async fn customize(
    State(state): State<AppState>,
    Caller(who): Caller,
    Path(handle): Path<String>,
    Json(b): Json<CustomizeBody>,
) -> Result<Response, Problem> {
    answer(&state, who, None, move |s| {
        s.member_customize(&handle, &b.offer_id)
    })
    .await
}
