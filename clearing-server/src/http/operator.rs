//! The platform API's operator handlers: merchants, terminals, cards, the catalogue, credentials and
//! console logins, the fleet, exceptions, the audit log (`crate::service`; every other role is `403`).

use axum::extract::{Path, State};
use axum::http::{StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use redeemd_contract::model::{CardNumber, MerchantScope};
use serde::Deserialize;

use super::AppState;
use super::caller::{Caller, Json};
use super::platform::{PeriodQuery, answer, done, query};
use super::problem::Problem;
use crate::core::cards::{ItemSpec, NewCard, PackageSpec, StatusAction, parse_time};
use crate::core::catalogue::Offer;
use crate::service::cards::CardSel;
use crate::service::catalogue::OfferView;
use crate::service::merchants::MerchantInput;
use crate::service::people::parse_role;

fn created(v: impl serde::Serialize) -> Response {
    (StatusCode::CREATED, axum::Json(v)).into_response()
}

/// A card id in a path: a positive integer, else there is no such card.
fn card_id(raw: &str) -> Result<i64, Problem> {
    raw.parse::<i64>()
        .ok()
        .filter(|id| *id > 0)
        .ok_or_else(|| Problem::not_found(format!("card {raw:?} not found")))
}

fn number(field: &str, raw: &str) -> Result<CardNumber, Problem> {
    // Not echoed: it may be a real card number with a typo.
    CardNumber::parse(raw).map_err(|e| Problem::invalid(field, e.to_string()))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MerchantBody {
    pub name: String,
    pub commission_bps: u32,
    #[serde(default)]
    pub categories: Vec<String>,
}

pub(super) async fn merchants(
    State(state): State<AppState>,
    Caller(who): Caller,
) -> Result<Response, Problem> {
    answer(&state, who, Some("merchants"), |s| s.merchants()).await
}

pub(super) async fn put_merchant(
    State(state): State<AppState>,
    Caller(who): Caller,
    Path(id): Path<String>,
    Json(b): Json<MerchantBody>,
) -> Result<Response, Problem> {
    answer(&state, who, None, move |s| {
        s.put_merchant(
            &id,
            &MerchantInput {
                name: b.name,
                commission_bps: b.commission_bps,
                categories: b.categories,
            },
        )
    })
    .await
}

async fn set_enabled(
    state: AppState,
    who: crate::core::access::Principal,
    (merchant, terminal): (String, String),
    enabled: bool,
) -> Result<Response, Problem> {
    answer(&state, who, None, move |s| {
        s.set_terminal_enabled_of(&merchant, &terminal, enabled)
    })
    .await
}

pub(super) async fn disable_terminal(
    State(state): State<AppState>,
    Caller(who): Caller,
    Path(ids): Path<(String, String)>,
) -> Result<Response, Problem> {
    set_enabled(state, who, ids, false).await
}

pub(super) async fn enable_terminal(
    State(state): State<AppState>,
    Caller(who): Caller,
    Path(ids): Path<(String, String)>,
) -> Result<Response, Problem> {
    set_enabled(state, who, ids, true).await
}

pub(super) async fn exceptions(
    State(state): State<AppState>,
    Caller(who): Caller,
) -> Result<Response, Problem> {
    answer(&state, who, None, |s| s.exceptions()).await
}

pub(super) async fn fleet(
    State(state): State<AppState>,
    Caller(who): Caller,
) -> Result<Response, Problem> {
    let terminals = state.as_caller(who, |s| s.fleet()).await?;
    let alerts: Vec<_> = terminals.iter().flat_map(|t| t.alerts.clone()).collect();
    Ok(axum::Json(serde_json::json!({ "terminals": terminals, "alerts": alerts })).into_response())
}

#[derive(Debug, Default, Deserialize)]
pub struct AuditQuery {
    pub before: Option<i64>,
    pub limit: Option<u32>,
}

pub(super) async fn audit(
    State(state): State<AppState>,
    Caller(who): Caller,
    uri: Uri,
) -> Result<Response, Problem> {
    let q = query::<AuditQuery>(&uri)?;
    answer(&state, who, Some("entries"), move |s| {
        s.audit_log(q.before, q.limit.unwrap_or(100))
    })
    .await
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewCardBody {
    pub number: String,
    #[serde(default)]
    pub holder: Option<String>,
    #[serde(default)]
    pub identity: Option<String>,
}

pub(super) async fn create_card(
    State(state): State<AppState>,
    Caller(who): Caller,
    Json(b): Json<NewCardBody>,
) -> Result<Response, Problem> {
    let new = NewCard {
        number: number("number", &b.number)?,
        holder_name: b.holder,
        identity_data: b.identity,
    };
    let c = state.as_caller(who, move |s| s.create_card(&new)).await?;
    Ok(created(c))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NumberBody {
    pub number: String,
}

pub(super) async fn find_card(
    State(state): State<AppState>,
    Caller(who): Caller,
    Json(b): Json<NumberBody>,
) -> Result<Response, Problem> {
    let n = number("number", &b.number)?;
    answer(&state, who, None, move |s| s.card(CardSel::Number(&n))).await
}

pub(super) async fn card(
    State(state): State<AppState>,
    Caller(who): Caller,
    Path(raw): Path<String>,
) -> Result<Response, Problem> {
    let id = card_id(&raw)?;
    answer(&state, who, None, move |s| s.card(CardSel::Id(id))).await
}

/// Where a package or an offer may be used: `{"merchants": […]}` or `{"categories": […]}`, exactly
/// one of the two (null or left out: every merchant). A map, so that a null list or a second key is
/// refused rather than read as absent.
pub type ScopeBody = std::collections::BTreeMap<String, Vec<String>>;

fn scope(s: Option<ScopeBody>) -> Result<MerchantScope, Problem> {
    let Some(mut s) = s else {
        return Ok(MerchantScope::All);
    };
    let one = |s: &ScopeBody| s.len() == 1;
    match (one(&s), s.remove("merchants"), s.remove("categories")) {
        (true, Some(m), None) => Ok(MerchantScope::Merchants(m)),
        (true, None, Some(c)) => Ok(MerchantScope::Categories(c)),
        _ => Err(Problem::invalid(
            "scope",
            "exactly one of merchants or categories (leave scope out for every merchant)",
        )),
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PackageBody {
    pub title: String,
    pub valid_from: String,
    pub valid_until: String,
    #[serde(default)]
    pub scope: Option<ScopeBody>,
    #[serde(default)]
    pub daily_cap: Option<u32>,
    #[serde(default)]
    pub identity_required: bool,
    pub items: Vec<ItemSpec>,
}

pub(super) async fn customize(
    State(state): State<AppState>,
    Caller(who): Caller,
    Path((raw, package_id)): Path<(String, String)>,
    Json(b): Json<PackageBody>,
) -> Result<Response, Problem> {
    let id = card_id(&raw)?;
    let spec = PackageSpec {
        id: package_id,
        title: b.title,
        valid_from_ms: parse_time("valid_from", &b.valid_from, false)?,
        valid_until_ms: parse_time("valid_until", &b.valid_until, true)?,
        scope: scope(b.scope)?,
        daily_cap: b.daily_cap,
        identity_required: b.identity_required,
        items: b.items,
    };
    answer(&state, who, None, move |s| {
        s.customize(CardSel::Id(id), &spec)
    })
    .await
}

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StatusActionBody {
    ReportLost,
    Freeze,
    Unlock,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StatusBody {
    pub action: StatusActionBody,
}

pub(super) async fn card_status(
    State(state): State<AppState>,
    Caller(who): Caller,
    Path(raw): Path<String>,
    Json(b): Json<StatusBody>,
) -> Result<Response, Problem> {
    let id = card_id(&raw)?;
    let action = match b.action {
        StatusActionBody::ReportLost => StatusAction::ReportLost,
        StatusActionBody::Freeze => StatusAction::Freeze,
        StatusActionBody::Unlock => StatusAction::Unlock,
    };
    answer(&state, who, None, move |s| {
        s.set_card_status(CardSel::Id(id), action)
    })
    .await
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReissueBody {
    pub to_number: String,
}

pub(super) async fn reissue(
    State(state): State<AppState>,
    Caller(who): Caller,
    Path(raw): Path<String>,
    Json(b): Json<ReissueBody>,
) -> Result<Response, Problem> {
    let id = card_id(&raw)?;
    let to = number("to_number", &b.to_number)?;
    answer(&state, who, None, move |s| s.reissue(CardSel::Id(id), &to)).await
}

pub(super) async fn card_usage(
    State(state): State<AppState>,
    Caller(who): Caller,
    Path(raw): Path<String>,
    uri: Uri,
) -> Result<Response, Problem> {
    let id = card_id(&raw)?;
    let window = query::<PeriodQuery>(&uri)?.window()?;
    answer(&state, who, None, move |s| {
        s.card_usage(CardSel::Id(id), window)
    })
    .await
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GrantBody {
    pub app_id: String,
}

pub(super) async fn grants(
    State(state): State<AppState>,
    Caller(who): Caller,
    Path(raw): Path<String>,
) -> Result<Response, Problem> {
    let id = card_id(&raw)?;
    answer(&state, who, Some("grants"), move |s| {
        s.grants(CardSel::Id(id))
    })
    .await
}

pub(super) async fn grant(
    State(state): State<AppState>,
    Caller(who): Caller,
    Path(raw): Path<String>,
    Json(b): Json<GrantBody>,
) -> Result<Response, Problem> {
    let id = card_id(&raw)?;
    answer(&state, who, None, move |s| {
        s.grant_card(CardSel::Id(id), &b.app_id)
    })
    .await
}

pub(super) async fn revoke_grant(
    State(state): State<AppState>,
    Caller(who): Caller,
    Path((raw, app)): Path<(String, String)>,
) -> Result<Response, Problem> {
    let id = card_id(&raw)?;
    done(&state, who, move |s| s.revoke_grant(CardSel::Id(id), &app)).await
}

#[derive(Debug, Default, Deserialize)]
pub struct CatalogueQuery {
    /// Retired offers too (operators).
    #[serde(default)]
    pub all: bool,
}

pub(super) async fn catalogue(
    State(state): State<AppState>,
    Caller(who): Caller,
    uri: Uri,
) -> Result<Response, Problem> {
    let all = query::<CatalogueQuery>(&uri)?.all;
    answer(&state, who, Some("offers"), move |s| {
        Ok(s.catalogue(all)?
            .iter()
            .map(OfferView::from)
            .collect::<Vec<_>>())
    })
    .await
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OfferBody {
    pub title: String,
    pub valid_days: u32,
    #[serde(default)]
    pub scope: Option<ScopeBody>,
    #[serde(default)]
    pub daily_cap: Option<u32>,
    #[serde(default)]
    pub identity_required: bool,
    pub items: Vec<ItemSpec>,
}

pub(super) async fn put_offer(
    State(state): State<AppState>,
    Caller(who): Caller,
    Path(id): Path<String>,
    Json(b): Json<OfferBody>,
) -> Result<Response, Problem> {
    let offer = Offer {
        id,
        title: b.title,
        valid_days: b.valid_days,
        scope: scope(b.scope)?,
        daily_cap: b.daily_cap,
        identity_required: b.identity_required,
        items: b.items,
        active: true,
    };
    answer(&state, who, None, move |s| {
        s.put_offer(&offer).map(|o| OfferView::from(&o))
    })
    .await
}

pub(super) async fn retire_offer(
    State(state): State<AppState>,
    Caller(who): Caller,
    Path(id): Path<String>,
) -> Result<Response, Problem> {
    answer(&state, who, None, move |s| {
        s.retire_offer(&id).map(|o| OfferView::from(&o))
    })
    .await
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CredentialBody {
    pub role: String,
    pub subject: String,
    #[serde(default)]
    pub label: String,
}

pub(super) async fn credentials(
    State(state): State<AppState>,
    Caller(who): Caller,
) -> Result<Response, Problem> {
    answer(&state, who, Some("credentials"), |s| s.credentials()).await
}

pub(super) async fn create_credential(
    State(state): State<AppState>,
    Caller(who): Caller,
    Json(b): Json<CredentialBody>,
) -> Result<Response, Problem> {
    let role = parse_role("role", &b.role)?;
    let issued = state
        .as_caller(who, move |s| {
            s.create_credential(role, &b.subject, &b.label)
        })
        .await?;
    Ok(super::credential_answer(StatusCode::CREATED, issued))
}

pub(super) async fn revoke_credential(
    State(state): State<AppState>,
    Caller(who): Caller,
    Path(id): Path<String>,
) -> Result<Response, Problem> {
    done(&state, who, move |s| s.revoke_credential(&id)).await
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserBody {
    pub name: String,
    pub role: String,
    pub subject: String,
    pub password: String,
}

pub(super) async fn users(
    State(state): State<AppState>,
    Caller(who): Caller,
) -> Result<Response, Problem> {
    answer(&state, who, Some("users"), |s| s.users()).await
}

pub(super) async fn create_user(
    State(state): State<AppState>,
    Caller(who): Caller,
    Json(b): Json<UserBody>,
) -> Result<Response, Problem> {
    let role = parse_role("role", &b.role)?;
    let u = state
        .as_caller(who, move |s| {
            s.create_user(&b.name, role, &b.subject, &b.password)
        })
        .await?;
    Ok(created(u))
}

pub(super) async fn revoke_user(
    State(state): State<AppState>,
    Caller(who): Caller,
    Path(name): Path<String>,
) -> Result<Response, Problem> {
    done(&state, who, move |s| s.revoke_user(&name)).await
}
