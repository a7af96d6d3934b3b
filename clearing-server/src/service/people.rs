//! The platform's people: API keys (issued once, stored as a hash, revocable), console logins
//! (argon2id), the audit log that records every change, and how a presented key or password becomes
//! the caller of an operation ([`authenticate`], [`login`]); console sessions ([`open_session`],
//! [`console_session`], [`Service::close_session`]).

use serde::Serialize;

use super::{Service, random};
use crate::core::access::{Principal, Role, Want};
use crate::core::cards::{check_id, check_title};
use crate::core::credentials::{self, KEY_RANDOM_BYTES};
use crate::core::problem::Problem;
use crate::core::throttle::{self as throttle_rule, Limits};
use crate::storage::access::{self, ConsoleUser, Credential};
use crate::storage::audit::{self, AuditEntry};
use crate::storage::{
    Db, Isolation, Tx, cards as card_store, console, pairing as pairing_store, throttle,
};

/// A new API key: its listing, and the token, shown once.
#[derive(Debug, Clone, Serialize)]
pub struct IssuedCredential {
    pub credential: Credential,
    pub token: String,
}

/// Most audit entries in one answer.
pub const MAX_AUDIT_ENTRIES: u32 = 1000;

/// The subject a credential or login of `role` acts as, checked: an operator's name, an existing
/// merchant, a member app's id.
fn check_subject(tx: &mut dyn Tx, role: Role, subject: &str) -> Result<(), Problem> {
    check_id("subject", subject)?;
    if role == Role::Merchant && card_store::merchant(tx, subject)?.is_none() {
        return Err(Problem::invalid(
            "subject",
            format!("merchant {subject} does not exist"),
        ));
    }
    Ok(())
}

pub fn parse_role(field: &str, s: &str) -> Result<Role, Problem> {
    Role::parse(s)
        .ok_or_else(|| Problem::invalid(field, format!("{s:?}: operator, merchant or member_app")))
}

impl Service<'_> {
    /// Issues an API key for `role` acting as `subject`. The token is in the answer only: the platform
    /// keeps its hash.
    pub fn create_credential(
        &self,
        role: Role,
        subject: &str,
        label: &str,
    ) -> Result<IssuedCredential, Problem> {
        self.allow(Want::Operate, || "credentials".into())?;
        if !label.is_empty() {
            check_title("label", label)?;
        }
        self.db.write(|tx| {
            check_subject(tx, role, subject)?;
            for _ in 0..4 {
                let key = credentials::issue_key(&random::<KEY_RANDOM_BYTES>()?);
                let created_by = self.who.actor();
                let stored = access::insert_credential(
                    tx,
                    &access::NewCredential {
                        id: &key.id,
                        role,
                        subject,
                        label,
                        secret_hash: &key.hash,
                        created_by: &created_by,
                        now_ms: self.now_ms,
                    },
                )?;
                if stored {
                    self.audit(
                        tx,
                        "credential.create",
                        &format!("credential {}", key.id),
                        &format!("{role} {subject} {label:?}"),
                    )?;
                    let credential = access::credential(tx, &key.id)?.ok_or_else(|| {
                        Problem::internal(format!("credential {} vanished", key.id))
                    })?;
                    return Ok(IssuedCredential {
                        credential,
                        token: key.token.to_string(),
                    });
                }
            }
            Err(Problem::internal(
                "no unused key id drawn in 4 tries".into(),
            ))
        })
    }

    pub fn credentials(&self) -> Result<Vec<Credential>, Problem> {
        self.allow(Want::Operate, || "credentials".into())?;
        Ok(self.db.read(access::credentials)?)
    }

    /// Revokes an API key: refused from its next request on.
    pub fn revoke_credential(&self, id: &str) -> Result<(), Problem> {
        self.allow(Want::Operate, || "credentials".into())?;
        self.db.write(|tx| {
            if !access::revoke_credential(tx, id, self.now_ms)? {
                return Err(Problem::not_found(format!(
                    "credential {id} not found (or already revoked)"
                )));
            }
            let ended = pairing_store::end_codes_made_via(tx, &via_key(id), self.now_ms)?;
            self.audit(
                tx,
                "credential.revoke",
                &format!("credential {id}"),
                &codes_ended(ended),
            )?;
            Ok(())
        })
    }

    /// Adds a console login for `role` acting as `subject` (operators and merchants log in to the
    /// console; the member app uses a key).
    pub fn create_user(
        &self,
        name: &str,
        role: Role,
        subject: &str,
        password: &str,
    ) -> Result<ConsoleUser, Problem> {
        self.allow(Want::Operate, || "users".into())?;
        check_id("name", name)?;
        if role == Role::MemberApp {
            return Err(Problem::invalid(
                "role",
                "member_app: the member app uses an API key, not a console login",
            ));
        }
        credentials::check_password("password", password)?;
        let hash = credentials::hash_password(password, &random()?)?;
        self.db.write(|tx| {
            check_subject(tx, role, subject)?;
            let user = ConsoleUser {
                name: name.to_owned(),
                role: role.as_str().to_owned(),
                subject: subject.to_owned(),
                created_ms: self.now_ms,
                created_by: self.who.actor(),
                revoked_ms: None,
            };
            if !access::insert_user(tx, &user, &hash)? {
                return Err(Problem::conflict(
                    "already_exists",
                    format!("user {name} already exists"),
                ));
            }
            self.audit(
                tx,
                "user.create",
                &format!("user {name}"),
                &format!("{role} {subject}"),
            )?;
            Ok(user)
        })
    }

    pub fn users(&self) -> Result<Vec<ConsoleUser>, Problem> {
        self.allow(Want::Operate, || "users".into())?;
        Ok(self.db.read(access::users)?)
    }

    pub fn revoke_user(&self, name: &str) -> Result<(), Problem> {
        self.allow(Want::Operate, || "users".into())?;
        self.db.write(|tx| {
            if !access::revoke_user(tx, name, self.now_ms)? {
                return Err(Problem::not_found(format!(
                    "user {name} not found (or already revoked)"
                )));
            }
            let mut ended = 0;
            for via in [via_login(name), via_console(name)] {
                ended += pairing_store::end_codes_made_via(tx, &via, self.now_ms)?;
            }
            self.audit(
                tx,
                "user.revoke",
                &format!("user {name}"),
                &codes_ended(ended),
            )?;
            Ok(())
        })
    }

    /// The latest audit entries, newest first (`before`: an entry id, to page back).
    pub fn audit_log(&self, before: Option<i64>, limit: u32) -> Result<Vec<AuditEntry>, Problem> {
        self.allow(Want::Operate, || "audit log".into())?;
        if !(1..=MAX_AUDIT_ENTRIES).contains(&limit) {
            return Err(Problem::invalid(
                "limit",
                format!("{limit}: 1 to {MAX_AUDIT_ENTRIES}"),
            ));
        }
        Ok(self.db.read(|tx| audit::entries(tx, before, limit))?)
    }
}

/// How a caller came in, as its actor names it (`Principal::actor`): written in the audit log and
/// as the maker of a pairing code, and matched when the credential is revoked.
fn via_key(id: &str) -> String {
    format!("key {id}")
}

fn via_login(name: &str) -> String {
    format!("login {name}")
}

fn via_console(name: &str) -> String {
    format!("console login {name}")
}

/// The audit detail of a revocation that ended pairing codes.
fn codes_ended(n: u64) -> String {
    match n {
        0 => String::new(),
        n => format!("{n} unused pairing code(s) it made ended"),
    }
}

fn bad_credentials() -> Problem {
    Problem::new(
        401,
        "bad_credentials",
        "the API key is not valid (unknown, revoked, or not in the rdk_… format)".into(),
    )
}

/// The caller an API key (`Authorization: Bearer rdk_…`) stands for: found by its id, its secret's
/// hash compared in constant time. An unknown, revoked or wrong key is one answer, `401
/// bad_credentials`.
pub fn authenticate(db: &Db, token: &str) -> Result<Principal, Problem> {
    let key = credentials::parse_key(token).ok_or_else(bad_credentials)?;
    let stored = db.read(|tx| access::live_credential(tx, &key.id))?;
    match stored {
        Some((role, subject, hash)) if key.matches(&hash) => {
            let role = Role::parse(&role).ok_or_else(|| {
                Problem::internal(format!("credential {}: role {role:?}", key.id))
            })?;
            Ok(Principal::new(role, subject, via_key(&key.id)))
        }
        _ => Err(bad_credentials()),
    }
}

/// Wrong console logins: 10 per source address and 500 on the platform in 15 minutes.
const LOGIN_THROTTLE: Limits = Limits {
    scope: "login",
    what: "logins",
    window_ms: 15 * 60_000,
    per_source: 10,
    global: 500,
};

/// A console login: the caller a name and password stand for. Wrong names and passwords are one
/// answer (`401 bad_credentials`), counted per source address and for the platform; past the limit
/// every attempt is `429` until the window ends. A name that does not exist costs the same argon2
/// work as one that does.
pub fn login(
    db: &Db,
    name: &str,
    password: &str,
    source: &str,
    now_ms: i64,
) -> Result<Principal, Problem> {
    let failures = db.read(|tx| throttle::failures(tx, LOGIN_THROTTLE, source, now_ms))?;
    throttle_rule::check(LOGIN_THROTTLE, failures, now_ms)?;
    let user = db.read(|tx| access::live_user(tx, name))?;
    // An argon2 check either way: a missing name takes as long as a wrong password.
    const DUMMY: &str = "$argon2id$v=19$m=19456,t=2,p=1$AAAAAAAAAAAAAAAAAAAAAA$AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA";
    let phc = user.as_ref().map_or(DUMMY, |(_, _, h)| h.as_str());
    let ok = credentials::verify_password(password, phc) && user.is_some();
    match user {
        Some((role, subject, _)) if ok => {
            let role = Role::parse(&role)
                .ok_or_else(|| Problem::internal(format!("user {name}: role {role:?}")))?;
            Ok(Principal::new(role, subject, via_login(name)))
        }
        _ => {
            db.transaction(Isolation::ReadCommitted, |tx| {
                throttle::note_failure(tx, LOGIN_THROTTLE, source, now_ms)
            })?;
            Err(Problem::new(
                401,
                "bad_credentials",
                "wrong name or password".into(),
            ))
        }
    }
}

/// A console session just opened: the cookie's token (shown to the browser once, stored hashed) and
/// the caller it stands for.
pub struct OpenedSession {
    pub token: zeroize::Zeroizing<String>,
    pub session: ConsoleCaller,
}

/// The caller of a console request, from its session cookie.
#[derive(Debug, Clone)]
pub struct ConsoleCaller {
    pub who: Principal,
    /// The login's name (shown in the console's header).
    pub user_name: String,
    /// The token every form of this session carries (`crate::core::session::csrf_token`).
    pub csrf: String,
}

fn console_principal(role: &str, subject: String, name: &str) -> Result<Principal, Problem> {
    let role = Role::parse(role)
        .ok_or_else(|| Problem::internal(format!("user {name}: role {role:?}")))?;
    Ok(Principal::new(role, subject, via_console(name)))
}

/// Logs a person in to the console ([`login`]: throttled, one answer for a wrong name or password)
/// and opens a session: its hash stored, the login audited. Ended sessions are forgotten meanwhile.
pub fn open_session(
    db: &Db,
    vault: &crate::vault::Vault,
    name: &str,
    password: &str,
    source: &str,
    now_ms: i64,
) -> Result<OpenedSession, Problem> {
    use crate::core::session::{self, ABSOLUTE_MS, IDLE_MS};
    let checked = login(db, name, password, source, now_ms)?;
    let who = console_principal(checked.role.as_str(), checked.subject, name)?;
    let svc = Service::new(db, vault, &who, now_ms);
    db.write(|tx| {
        console::prune_sessions(tx, now_ms, now_ms.saturating_sub(IDLE_MS))?;
        for _ in 0..4 {
            let token = zeroize::Zeroizing::new(session::new_token(&random()?));
            let stored = console::insert_session(
                tx,
                &session::token_hash(&token),
                name,
                now_ms,
                now_ms.saturating_add(ABSOLUTE_MS),
            )?;
            if stored {
                svc.audit(
                    tx,
                    "console.login",
                    &format!("user {name}"),
                    &format!("from {source}"),
                )?;
                return Ok(OpenedSession {
                    session: ConsoleCaller {
                        who: who.clone(),
                        user_name: name.to_owned(),
                        csrf: session::csrf_token(&token),
                    },
                    token,
                });
            }
        }
        Err(Problem::internal(
            "no unused session token drawn in 4 tries".into(),
        ))
    })
}

/// The caller a session cookie stands for: `None` when there is no such session, it ended (idle or
/// too old), or its user was revoked. A live session's last request is noted now and then.
pub fn console_session(
    db: &Db,
    token: &str,
    now_ms: i64,
) -> Result<Option<ConsoleCaller>, Problem> {
    use crate::core::session::{self, TOUCH_EVERY_MS};
    let Some(token) = session::parse_token(token) else {
        return Ok(None);
    };
    let hash = session::token_hash(token);
    let Some(row) = db.read(|tx| console::session(tx, &hash))? else {
        return Ok(None);
    };
    if !session::is_open(row.created_ms, row.seen_ms, now_ms) {
        return Ok(None);
    }
    if now_ms - row.seen_ms >= TOUCH_EVERY_MS {
        db.transaction(Isolation::ReadCommitted, |tx| {
            console::touch_session(tx, &hash, now_ms)
        })?;
    }
    Ok(Some(ConsoleCaller {
        who: console_principal(&row.role, row.subject, &row.user_name)?,
        user_name: row.user_name,
        csrf: session::csrf_token(token),
    }))
}

impl Service<'_> {
    /// Logs out: the session of this token ends now (audited).
    pub fn close_session(&self, token: &str, user_name: &str) -> Result<(), Problem> {
        let hash = crate::core::session::token_hash(token);
        self.db.write(|tx| {
            if console::delete_session(tx, &hash)? {
                self.audit(tx, "console.logout", &format!("user {user_name}"), "")?;
            }
            Ok(())
        })
    }
}
