//! Who may see and change what on the platform: the roles, the caller of an operation, and the one
//! place where a caller's role is checked against what an operation touches ([`check`]). Pure.
//!
//! * **operator** — the platform's staff: everything.
//! * **merchant** — one merchant's own data: its merchant record, terminals, statements, exceptions, its
//!   pairing codes. Another merchant's resource is *not found* (`404`), never *forbidden*: the answer
//!   does not confirm that it exists. What no merchant may do (operator actions) is `403`.
//! * **member app** — the platform's own member app, server to server, acting for one card at a time: only
//!   cards granted to this app (a grant names the app and the card; `docs/api/README.md`, "Member app");
//!   any other card is not found.
//!
//! Every operation of [`crate::service`] states what it touches as a [`Want`] and calls [`check`] first.

use std::fmt;

/// A role a credential is issued for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Role {
    Operator,
    Merchant,
    MemberApp,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Operator => "operator",
            Role::Merchant => "merchant",
            Role::MemberApp => "member_app",
        }
    }

    pub fn parse(s: &str) -> Option<Role> {
        Some(match s {
            "operator" => Role::Operator,
            "merchant" => Role::Merchant,
            "member_app" => Role::MemberApp,
            _ => return None,
        })
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The caller of an operation: a role, whom it acts as (the operator's name, the merchant id, the
/// member app's id), and by what means (`key k_3f9a…`, `admin CLI (user root)`) for the audit log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub role: Role,
    pub subject: String,
    pub via: String,
}

impl Principal {
    pub fn new(role: Role, subject: impl Into<String>, via: impl Into<String>) -> Principal {
        Principal {
            role,
            subject: subject.into(),
            via: via.into(),
        }
    }

    /// The audit log's "who": `operator alice (key k_3f9a…)`.
    pub fn actor(&self) -> String {
        format!("{} {} ({})", self.role, self.subject, self.via)
    }
}

/// What an operation touches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Want<'a> {
    /// Platform-wide data or an operator action (cards, catalogue changes, credentials, the fleet, the
    /// audit log): operators only.
    Operate,
    /// A merchant's own data (read, or a merchant's own action such as a pairing code): that merchant
    /// or an operator.
    Merchant(&'a str),
    /// One card, for the member app: the app the card is granted to (`None`: granted to no app).
    /// Operators use the operator operations on cards instead.
    GrantedCard { granted_to: Option<&'a str> },
    /// The platform's catalogue of packages, read: operators and the member app.
    Catalogue,
}

/// Why a caller was turned away.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Denied {
    /// `403`: the role may never do this.
    Forbidden,
    /// `404`: not this caller's; whether it exists is not said.
    NotFound,
}

/// The one check of a caller's role against what an operation touches.
pub fn check(p: &Principal, want: Want<'_>) -> Result<(), Denied> {
    match (p.role, want) {
        (Role::Operator, Want::GrantedCard { .. }) => Err(Denied::Forbidden),
        (Role::Operator, _) => Ok(()),
        (Role::Merchant, Want::Merchant(m)) if m == p.subject => Ok(()),
        (Role::Merchant, Want::Merchant(_)) => Err(Denied::NotFound),
        (Role::MemberApp, Want::GrantedCard { granted_to }) if granted_to == Some(&p.subject) => {
            Ok(())
        }
        (Role::MemberApp, Want::GrantedCard { .. }) => Err(Denied::NotFound),
        (Role::MemberApp, Want::Catalogue) => Ok(()),
        (Role::Merchant | Role::MemberApp, _) => Err(Denied::Forbidden),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn who(role: Role, subject: &str) -> Principal {
        Principal::new(role, subject, "test")
    }

    #[test]
    fn each_role_reaches_what_it_may_and_nothing_else() {
        let op = who(Role::Operator, "alice");
        let m1 = who(Role::Merchant, "M-1");
        let app = who(Role::MemberApp, "app");
        let granted = |to| Want::GrantedCard { granted_to: to };
        assert_eq!(check(&op, Want::Operate), Ok(()));
        assert_eq!(check(&op, Want::Merchant("M-2")), Ok(()));
        assert_eq!(check(&op, granted(Some("app"))), Err(Denied::Forbidden));
        assert_eq!(check(&m1, Want::Merchant("M-1")), Ok(()));
        assert_eq!(check(&m1, Want::Merchant("M-2")), Err(Denied::NotFound));
        assert_eq!(check(&m1, Want::Operate), Err(Denied::Forbidden));
        assert_eq!(check(&m1, granted(Some("M-1"))), Err(Denied::Forbidden));
        assert_eq!(check(&m1, Want::Catalogue), Err(Denied::Forbidden));
        assert_eq!(check(&app, granted(Some("app"))), Ok(()));
        assert_eq!(check(&app, granted(Some("other"))), Err(Denied::NotFound));
        assert_eq!(check(&app, granted(None)), Err(Denied::NotFound));
        assert_eq!(check(&app, Want::Catalogue), Ok(()));
        assert_eq!(check(&app, Want::Operate), Err(Denied::Forbidden));
        assert_eq!(check(&app, Want::Merchant("app")), Err(Denied::Forbidden));
        assert_eq!(op.actor(), "operator alice (test)");
    }
}
