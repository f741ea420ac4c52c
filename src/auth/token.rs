//! Static bearer tokens (AUTH.md §3.1): the configured `tokens` map, looked up exactly and in
//! constant time, then the grant's revocation and expiry checks.
//!
//! Owns: the SHA-256 digests of the configured tokens and the default `tokenId`.
//! Must never: compare a presented token with an early exit (no `==` on secrets, no map lookup
//! keyed by the presented token), reveal which configured token came closest, or print a token
//! (Debug is redacted).
#![deny(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::collections::BTreeMap;

use sha2::{Digest, Sha256};
use subtle::{ConditionallySelectable, ConstantTimeEq};

use super::{AuthError, Principal};
use crate::config::TokenGrant;

pub const TOKEN_REQUIRED: AuthError = AuthError {
    message: "A bearer token is required",
    refresh: false,
};
pub const INVALID_TOKEN: AuthError = AuthError {
    message: "Invalid token",
    refresh: false,
};
pub const TOKEN_REVOKED: AuthError = AuthError {
    message: "Token has been revoked",
    refresh: true,
};
pub const TOKEN_EXPIRED: AuthError = AuthError {
    message: "Token expired; issue a refreshed token.",
    refresh: true,
};

/// First 16 hex characters of SHA-256 of a token: the default `tokenId` (AUTH.md §1).
pub fn default_token_id(token: &str) -> String {
    let digest = Sha256::digest(token.as_bytes());
    digest
        .iter()
        .take(8)
        .map(|byte| format!("{byte:02x}"))
        .collect()
}

struct Entry {
    token: Vec<u8>,
    digest: [u8; 32],
    grant: TokenGrant,
    token_id: String,
}

/// The configured tokens, ready for constant-time lookup.
pub struct TokenStore {
    entries: Vec<Entry>,
}

impl std::fmt::Debug for TokenStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenStore")
            .field("tokens", &self.entries.len())
            .finish_non_exhaustive()
    }
}

impl TokenStore {
    pub fn new(tokens: &BTreeMap<String, TokenGrant>) -> TokenStore {
        let entries = tokens
            .iter()
            .map(|(token, grant)| Entry {
                token: token.as_bytes().to_vec(),
                digest: Sha256::digest(token.as_bytes()).into(),
                grant: grant.clone(),
                token_id: grant
                    .token_id
                    .clone()
                    .unwrap_or_else(|| default_token_id(token)),
            })
            .collect();
        TokenStore { entries }
    }

    /// Finds the entry whose token equals `candidate`. Every configured token is compared — as
    /// fixed-length SHA-256 digests, so neither a length difference nor a common prefix changes
    /// the work done — and the matching index is selected without branching on secret data.
    fn find(&self, candidate: &str) -> Option<&Entry> {
        let digest: [u8; 32] = Sha256::digest(candidate.as_bytes()).into();
        let mut found = u64::MAX;
        for (index, entry) in self.entries.iter().enumerate() {
            let equal = entry.digest.as_slice().ct_eq(digest.as_slice());
            found.conditional_assign(&(index as u64), equal);
        }
        let entry = usize::try_from(found)
            .ok()
            .and_then(|index| self.entries.get(index))?;
        // Digest equality is exact up to SHA-256 collisions; confirm on the bytes so the lookup is
        // exact by construction ("lookup is exact").
        bool::from(entry.token.as_slice().ct_eq(candidate.as_bytes())).then_some(entry)
    }

    /// AUTH.md §3.1: unknown → "Invalid token"; then "`revokedAtMs` … checked **first**: if
    /// `revokedAtMs ≤ now`", then "if `expiresAtMs ≤ now`".
    pub fn authenticate(&self, token: &str, now_ms: u64) -> Result<Principal, AuthError> {
        if token.is_empty() {
            return Err(TOKEN_REQUIRED);
        }
        let entry = self.find(token).ok_or(INVALID_TOKEN)?;
        let grant = &entry.grant;
        if grant.revoked_at_ms.is_some_and(|revoked| revoked <= now_ms) {
            return Err(TOKEN_REVOKED);
        }
        if grant.expires_at_ms.is_some_and(|expires| expires <= now_ms) {
            return Err(TOKEN_EXPIRED);
        }
        Ok(Principal {
            role: grant.role.clone(),
            scopes: grant.scopes.clone(),
            user_id: grant.user_id.clone(),
            token_id: Some(entry.token_id.clone()),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grant(role: &str) -> TokenGrant {
        TokenGrant {
            role: role.into(),
            scopes: vec!["run:read".into()],
            user_id: None,
            token_id: None,
            issued_at_ms: None,
            expires_at_ms: None,
            revoked_at_ms: None,
        }
    }

    fn store() -> TokenStore {
        let mut tokens = BTreeMap::new();
        tokens.insert(
            "alpha-token-0001".to_string(),
            TokenGrant {
                user_id: Some("alice".into()),
                ..grant("admin")
            },
        );
        tokens.insert(
            "beta-token-00002".to_string(),
            TokenGrant {
                token_id: Some("beta-id".into()),
                ..grant("operator")
            },
        );
        tokens.insert(
            "revoked-token".to_string(),
            TokenGrant {
                revoked_at_ms: Some(1_000),
                expires_at_ms: Some(500),
                ..grant("operator")
            },
        );
        tokens.insert(
            "expiring-token".to_string(),
            TokenGrant {
                expires_at_ms: Some(1_000),
                issued_at_ms: Some(5_000),
                ..grant("operator")
            },
        );
        TokenStore::new(&tokens)
    }

    #[test]
    fn default_token_id_is_sha256_prefix() {
        // SHA-256("abc") = ba7816bf8f01cfea414140de5dae2223...
        assert_eq!(default_token_id("abc"), "ba7816bf8f01cfea");
        assert_eq!(default_token_id("abc").len(), 16);
    }

    #[test]
    fn valid_tokens_map_to_their_grants() {
        let store = store();
        let alpha = store
            .authenticate("alpha-token-0001", 0)
            .unwrap_or_else(|e| panic!("{e:?}"));
        assert_eq!(alpha.role, "admin");
        assert_eq!(alpha.user_id.as_deref(), Some("alice"));
        assert_eq!(alpha.scopes, vec!["run:read".to_string()]);
        assert_eq!(alpha.token_id, Some(default_token_id("alpha-token-0001")));
        let beta = store
            .authenticate("beta-token-00002", 0)
            .unwrap_or_else(|e| panic!("{e:?}"));
        assert_eq!(beta.token_id.as_deref(), Some("beta-id"));
        assert_eq!(beta.user_id, None);
    }

    #[test]
    fn unknown_prefix_and_near_misses_are_invalid() {
        let store = store();
        for candidate in [
            "unknown",
            "alpha-token-000",   // prefix of a valid token
            "alpha-token-0002",  // same length, last byte differs
            "alpha-token-00010", // valid token plus a trailing byte
            "Alpha-token-0001",
            " alpha-token-0001",
            "alpha-token-0001 ",
            "__proto__",
            "constructor",
            "toString",
            "hasOwnProperty",
        ] {
            assert_eq!(
                store.authenticate(candidate, 0),
                Err(INVALID_TOKEN),
                "{candidate}"
            );
        }
        assert_eq!(store.authenticate("", 0), Err(TOKEN_REQUIRED));
    }

    #[test]
    fn revocation_is_checked_first_and_boundaries_are_inclusive() {
        let store = store();
        // revokedAtMs 1000, expiresAtMs 500: at 600 it is expired but not yet revoked.
        assert_eq!(
            store.authenticate("revoked-token", 499).map(|p| p.role),
            Ok("operator".into())
        );
        assert_eq!(store.authenticate("revoked-token", 500), Err(TOKEN_EXPIRED));
        assert_eq!(store.authenticate("revoked-token", 999), Err(TOKEN_EXPIRED));
        assert_eq!(
            store.authenticate("revoked-token", 1_000),
            Err(TOKEN_REVOKED)
        );
        assert_eq!(
            store.authenticate("revoked-token", u64::MAX),
            Err(TOKEN_REVOKED)
        );
        assert!(store.authenticate("expiring-token", 999).is_ok());
        assert_eq!(
            store.authenticate("expiring-token", 1_000),
            Err(TOKEN_EXPIRED)
        );
        const { assert!(TOKEN_REVOKED.refresh && TOKEN_EXPIRED.refresh) };
        const { assert!(!INVALID_TOKEN.refresh && !TOKEN_REQUIRED.refresh) };
    }

    #[test]
    fn debug_never_prints_tokens() {
        let text = format!("{:?}", store());
        assert!(!text.contains("alpha-token"), "{text}");
    }
}
