//! The platform API's routes (`docs/api/openapi.yaml`, tags `operator`, `merchant`, `member_app`,
//! `pairing`, `fleet`; prose in `docs/api/README.md`, "Platform API"), beside the terminal API. Every
//! route but pairing and the terminals' health report takes `Authorization: Bearer <API key>`; what
//! each role may reach is decided in one place (`crate::core::access`), by the operations the handlers
//! call (`crate::service`).

use axum::Router;
use axum::routing::{delete, get, post, put};

use super::{AppState, member, merchant, operator, pairing};

pub fn routes() -> Router<AppState> {
    Router::new()
        // Merchants and what is theirs: operators, or the merchant itself.
        .route("/v1/merchants", get(operator::merchants))
        .route(
            "/v1/merchants/{merchant_id}",
            get(merchant::merchant).put(operator::put_merchant),
        )
        .route(
            "/v1/merchants/{merchant_id}/terminals",
            get(merchant::terminals),
        )
        .route(
            "/v1/merchants/{merchant_id}/terminals/{terminal_id}",
            get(merchant::terminal),
        )
        .route(
            "/v1/merchants/{merchant_id}/terminals/{terminal_id}/disable",
            post(operator::disable_terminal),
        )
        .route(
            "/v1/merchants/{merchant_id}/terminals/{terminal_id}/enable",
            post(operator::enable_terminal),
        )
        .route(
            "/v1/merchants/{merchant_id}/pairing-codes",
            get(merchant::pairing_codes).post(merchant::create_pairing_code),
        )
        .route(
            "/v1/merchants/{merchant_id}/statement",
            get(merchant::statement),
        )
        .route(
            "/v1/merchants/{merchant_id}/statement/daily",
            get(merchant::daily_statement),
        )
        .route(
            "/v1/merchants/{merchant_id}/exceptions",
            get(merchant::exceptions),
        )
        // Operators.
        .route("/v1/exceptions", get(operator::exceptions))
        .route("/v1/fleet", get(operator::fleet))
        .route("/v1/audit", get(operator::audit))
        .route("/v1/cards", post(operator::create_card))
        .route("/v1/cards/search", post(operator::find_card))
        .route("/v1/cards/{card_id}", get(operator::card))
        .route(
            "/v1/cards/{card_id}/packages/{package_id}",
            put(operator::customize),
        )
        .route("/v1/cards/{card_id}/status", post(operator::card_status))
        .route("/v1/cards/{card_id}/reissue", post(operator::reissue))
        .route("/v1/cards/{card_id}/usage", get(operator::card_usage))
        .route(
            "/v1/cards/{card_id}/grants",
            get(operator::grants).post(operator::grant),
        )
        .route(
            "/v1/cards/{card_id}/grants/{app_id}",
            delete(operator::revoke_grant),
        )
        .route("/v1/catalogue", get(operator::catalogue))
        .route("/v1/catalogue/{offer_id}", put(operator::put_offer))
        .route(
            "/v1/catalogue/{offer_id}/retire",
            post(operator::retire_offer),
        )
        .route(
            "/v1/credentials",
            get(operator::credentials).post(operator::create_credential),
        )
        .route(
            "/v1/credentials/{credential_id}",
            delete(operator::revoke_credential),
        )
        .route(
            "/v1/users",
            get(operator::users).post(operator::create_user),
        )
        .route("/v1/users/{name}", delete(operator::revoke_user))
        // The member app, for one granted card at a time.
        .route("/v1/member/cards/{handle}", get(member::card))
        .route("/v1/member/cards/{handle}/usage", get(member::usage))
        .route(
            "/v1/member/cards/{handle}/report-lost",
            post(member::report_lost),
        )
        .route(
            "/v1/member/cards/{handle}/packages",
            post(member::customize),
        )
        // A shop PC pairing itself, and a terminal's health report (signed as a terminal).
        .route("/v1/enroll", post(pairing::enroll))
        .route("/v1/terminals/{terminal_id}/health", post(pairing::health))
}

/// `from` / `until` of a statement or usage query.
#[derive(Debug, Default, serde::Deserialize)]
pub struct PeriodQuery {
    pub from: Option<String>,
    pub until: Option<String>,
}

impl PeriodQuery {
    pub fn window(&self) -> Result<(i64, i64), super::problem::Problem> {
        crate::service::window(self.from.as_deref(), self.until.as_deref())
    }
}

/// A query string parsed strictly (a wrong value named), or its defaults when there is none.
pub fn query<T: serde::de::DeserializeOwned + Default>(
    uri: &axum::http::Uri,
) -> Result<T, super::problem::Problem> {
    match uri.query() {
        None | Some("") => Ok(T::default()),
        Some(q) => serde_urlencoded::from_str(q)
            .map_err(|e| super::problem::Problem::new(400, "bad_query", format!("query: {e}"))),
    }
}

/// Runs `f` as the caller and answers what it returns as JSON, under `key` when one is given (a list
/// is always an object's member: `{"merchants": […]}`).
pub async fn answer<T: serde::Serialize + Send + 'static>(
    state: &AppState,
    who: crate::core::access::Principal,
    key: Option<&'static str>,
    f: impl FnOnce(&crate::service::Service<'_>) -> Result<T, super::problem::Problem> + Send + 'static,
) -> Result<axum::response::Response, super::problem::Problem> {
    use axum::response::IntoResponse;
    let value = state.as_caller(who, f).await?;
    Ok(match key {
        Some(k) => {
            let mut object = serde_json::Map::new();
            let v = serde_json::to_value(value)
                .map_err(|e| super::problem::Problem::internal(e.to_string()))?;
            object.insert(k.to_owned(), v);
            axum::Json(object).into_response()
        }
        None => axum::Json(value).into_response(),
    })
}

/// Runs `f` as the caller and answers `204 No Content`.
pub async fn done(
    state: &AppState,
    who: crate::core::access::Principal,
    f: impl FnOnce(&crate::service::Service<'_>) -> Result<(), super::problem::Problem> + Send + 'static,
) -> Result<axum::response::Response, super::problem::Problem> {
    use axum::response::IntoResponse;
    state.as_caller(who, f).await?;
    Ok(axum::http::StatusCode::NO_CONTENT.into_response())
}
