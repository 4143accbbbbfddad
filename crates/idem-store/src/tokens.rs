//! API tokens for the HTTP surface: created with scopes, shown once, stored as a SHA-256
//! hash, revocable. A token is `idem_` followed by 64 hex digits of randomness; nothing in
//! the database can be turned back into it.

use chrono::{DateTime, Utc};
use rand::RngCore;
use serde::Serialize;
use sha2::{Digest, Sha256};
use sqlx::PgPool;
use uuid::Uuid;

use crate::StoreError;

/// What a token may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Scope {
    /// Submit actions.
    Submit,
    /// Read actions, receipts and the cell grid.
    Read,
    /// Approve, reject and resolve.
    Approve,
}

impl Scope {
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Submit => "submit",
            Scope::Read => "read",
            Scope::Approve => "approve",
        }
    }
}

impl std::str::FromStr for Scope {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "submit" => Ok(Scope::Submit),
            "read" => Ok(Scope::Read),
            "approve" => Ok(Scope::Approve),
            other => Err(format!("unknown scope {other:?}: submit, read or approve")),
        }
    }
}

/// A token as listed (never with its secret).
#[derive(Debug, Clone, Serialize)]
pub struct TokenInfo {
    pub id: Uuid,
    pub name: String,
    pub scopes: Vec<Scope>,
    pub created_at: DateTime<Utc>,
    pub last_used_at: Option<DateTime<Utc>>,
    pub revoked_at: Option<DateTime<Utc>>,
    /// Every scope this token submits in, or reads actions from, starts with this (a
    /// tenant's prefix); `None`: any scope.
    pub scope_prefix: Option<String>,
}

impl TokenInfo {
    pub fn allows(&self, scope: Scope) -> bool {
        self.revoked_at.is_none() && self.scopes.contains(&scope)
    }

    /// Whether an intent scope is one this token may use: inside its prefix, if bound.
    pub fn admits_scope(&self, scope: &str) -> bool {
        self.scope_prefix
            .as_deref()
            .is_none_or(|p| scope.starts_with(p))
    }

    /// Why `scope` is refused for this token, if it is: the message names the prefix.
    pub fn scope_refusal(&self, scope: &str) -> Option<String> {
        match self.scope_prefix.as_deref() {
            Some(p) if !scope.starts_with(p) => Some(format!(
                "token {} is bound to scopes starting with {p:?}; {scope:?} is outside it",
                self.name
            )),
            _ => None,
        }
    }
}

type Row = (
    Uuid,
    String,
    Vec<String>,
    DateTime<Utc>,
    Option<DateTime<Utc>>,
    Option<DateTime<Utc>>,
    Option<String>,
);

fn info(r: Row) -> TokenInfo {
    TokenInfo {
        id: r.0,
        name: r.1,
        scopes: r.2.iter().filter_map(|s| s.parse().ok()).collect(),
        created_at: r.3,
        last_used_at: r.4,
        revoked_at: r.5,
        scope_prefix: r.6,
    }
}

fn hash(secret: &str) -> Vec<u8> {
    Sha256::digest(secret.as_bytes()).to_vec()
}

/// Create a token; returns it with its secret, which is not stored and cannot be shown again.
pub async fn create(
    pool: &PgPool,
    name: &str,
    scopes: &[Scope],
) -> Result<(TokenInfo, String), StoreError> {
    create_bound(pool, name, scopes, None).await
}

/// As [`create`], bound to `scope_prefix` when given: the token submits only intents whose
/// scope starts with it and reads only actions named in such scopes. A bound token cannot
/// approve: decisions are fleet-wide.
pub async fn create_bound(
    pool: &PgPool,
    name: &str,
    scopes: &[Scope],
    scope_prefix: Option<&str>,
) -> Result<(TokenInfo, String), StoreError> {
    if name.trim().is_empty() || scopes.is_empty() {
        return Err(StoreError::Config(
            "a token needs a name and at least one scope".into(),
        ));
    }
    if let Some(p) = scope_prefix {
        if p.is_empty() || p.chars().count() > 200 {
            return Err(StoreError::Config(
                "a scope prefix is 1 to 200 characters".into(),
            ));
        }
        if scopes.contains(&Scope::Approve) {
            return Err(StoreError::Config(
                "a token bound to a scope prefix cannot have the approve scope: decisions \
                 are fleet-wide"
                    .into(),
            ));
        }
    }
    let mut bytes = [0u8; 32];
    rand::thread_rng().fill_bytes(&mut bytes);
    let secret = format!("idem_{}", hex::encode(bytes));
    let mut names: Vec<&str> = scopes.iter().map(|s| s.as_str()).collect();
    names.sort_unstable();
    names.dedup();
    let row: Row = sqlx::query_as(
        "INSERT INTO idem.api_tokens (name, secret_hash, scopes, scope_prefix) \
         VALUES ($1, $2, $3, $4) \
         RETURNING id, name, scopes, created_at, last_used_at, revoked_at, scope_prefix",
    )
    .bind(name.trim())
    .bind(hash(&secret))
    .bind(&names)
    .bind(scope_prefix)
    .fetch_one(pool)
    .await?;
    Ok((info(row), secret))
}

pub async fn list(pool: &PgPool) -> Result<Vec<TokenInfo>, StoreError> {
    let rows: Vec<Row> = sqlx::query_as(
        "SELECT id, name, scopes, created_at, last_used_at, revoked_at, scope_prefix FROM idem.api_tokens \
         ORDER BY created_at",
    )
    .fetch_all(pool)
    .await?;
    Ok(rows.into_iter().map(info).collect())
}

/// Revoke a token; false if there is no such live token.
pub async fn revoke(pool: &PgPool, id: Uuid) -> Result<bool, StoreError> {
    let n = sqlx::query(
        "UPDATE idem.api_tokens SET revoked_at = now() WHERE id = $1 AND revoked_at IS NULL",
    )
    .bind(id)
    .execute(pool)
    .await?
    .rows_affected();
    Ok(n == 1)
}

/// The live token whose secret this is, if any (and note its use).
pub async fn authenticate(pool: &PgPool, secret: &str) -> Result<Option<TokenInfo>, StoreError> {
    if !secret.starts_with("idem_") || secret.len() != 69 {
        return Ok(None);
    }
    let row: Option<Row> = sqlx::query_as(
        "UPDATE idem.api_tokens SET last_used_at = now() \
         WHERE secret_hash = $1 AND revoked_at IS NULL \
         RETURNING id, name, scopes, created_at, last_used_at, revoked_at, scope_prefix",
    )
    .bind(hash(secret))
    .fetch_optional(pool)
    .await?;
    Ok(row.map(info))
}
