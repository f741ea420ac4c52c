//! JWT mode, HS256 only (AUTH.md §3.2). Steps 0–3 of the reference table (presence, three
//! segments, base64url JSON objects, `alg` exactly `HS256`) are checked here by hand so the
//! reference's messages come out exactly; the signature and the typed registered claims are then
//! verified by `jsonwebtoken` with a `Validation` built field by field; finally the reference's
//! claim rules (iss, aud, exp, nbf with `clockSkewSeconds`) are applied in the reference order
//! against the clock value passed in.
//!
//! Must never: accept a token whose HMAC-SHA256 does not verify under the configured secret,
//! accept any `alg` but `HS256`, build a key or fetch anything from header fields (`kid`, `jku`,
//! `jwk`, `x5u` are ignored), panic or overflow on any claim value, or print the secret or a token.
#![deny(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::collections::HashSet;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use simd_json::prelude::*;
use simd_json::OwnedValue;

use super::proxy::split_scopes;
use super::token::{default_token_id, TOKEN_REQUIRED};
use super::{AuthError, Principal, REFRESH_HINT};
use crate::config::OneOrMany;

const fn unauthorized(message: &'static str) -> AuthError {
    AuthError {
        message,
        refresh: false,
    }
}

pub const SEGMENTS: AuthError = unauthorized("JWT must have three segments");
pub const NOT_JSON: AuthError = unauthorized("JWT header or payload was not valid JSON");
pub const UNSUPPORTED_ALG: AuthError = unauthorized("Unsupported JWT algorithm");
/// Not in the reference (it ignores `crit`): RFC 7515 §4.1.11 says a token naming critical
/// extensions we do not understand must be rejected, and we understand none. A separate message
/// keeps "Unsupported JWT algorithm" truthful.
pub const UNSUPPORTED_HEADER: AuthError = unauthorized("Unsupported JWT header");
pub const BAD_SIGNATURE: AuthError = unauthorized("JWT signature verification failed");
pub const BAD_ISSUER: AuthError = unauthorized("JWT issuer did not match");
pub const BAD_AUDIENCE: AuthError = unauthorized("JWT audience did not match");
pub const MISSING_EXP: AuthError = unauthorized("JWT is missing a valid exp claim");
pub const EXPIRED: AuthError = AuthError {
    message: "JWT has expired",
    refresh: true,
};
pub const NOT_ACTIVE: AuthError = unauthorized("JWT is not active yet");
/// Not in the reference: a bound on the work one credential can cause (base64 + two JSON parses).
/// Headers are already capped at 16 KiB by the HTTP parser; this also bounds `connect` tokens.
pub const TOO_LARGE: AuthError = unauthorized("JWT is too large");
/// A claims failure `jsonwebtoken` reports that the reference rules did not (defence in depth).
pub const INVALID: AuthError = unauthorized("Invalid token");

/// Largest accepted token, in bytes.
pub const JWT_BYTES_MAX: usize = 16 * 1024;

const _: () = assert!(!REFRESH_HINT.is_empty());

/// The JWT verifier for one configuration. Debug never prints the secret.
pub struct JwtAuth {
    key: DecodingKey,
    validation: Validation,
    issuer: String,
    audiences: Vec<String>,
    scopes_claim: String,
    role_claim: String,
    user_claim: String,
    default_role: Option<String>,
    default_scopes: Option<Vec<String>>,
    skew_seconds: i64,
    allow_missing_exp: bool,
}

impl std::fmt::Debug for JwtAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwtAuth")
            .field("secret", &"<redacted>")
            .field("issuer", &self.issuer)
            .field("audiences", &self.audiences)
            .field("skew_seconds", &self.skew_seconds)
            .field("allow_missing_exp", &self.allow_missing_exp)
            .finish_non_exhaustive()
    }
}

/// The JWT settings of `AuthConfig::Jwt`, borrowed.
pub struct JwtSettings<'a> {
    pub issuer: &'a str,
    pub audience: &'a OneOrMany,
    pub secret: &'a str,
    pub scopes_claim: Option<&'a str>,
    pub role_claim: Option<&'a str>,
    pub user_claim: Option<&'a str>,
    pub default_role: Option<&'a str>,
    pub default_scopes: Option<&'a [String]>,
    pub clock_skew_seconds: Option<i64>,
    pub allow_missing_exp: bool,
}

impl JwtAuth {
    pub fn new(settings: JwtSettings<'_>) -> JwtAuth {
        let audiences = settings.audience.to_vec();
        // "`clockSkewSeconds` (default 60; negatives become 0)".
        let skew_seconds = settings.clock_skew_seconds.unwrap_or(60).max(0);

        // The Validation is built field by field so no library default decides anything silently.
        let mut validation = Validation::new(Algorithm::HS256);
        validation.algorithms = vec![Algorithm::HS256];
        validation.set_issuer(&[settings.issuer]);
        validation.set_audience(&audiences);
        validation.validate_aud = true;
        validation.sub = None;
        // Required and well-typed: `iss`, `aud`, and `exp` unless the compatibility switch is on
        // (the reference treats `exp` as optional; docs/DECISIONS.md).
        let mut required: HashSet<String> = ["iss", "aud"].iter().map(|s| s.to_string()).collect();
        if !settings.allow_missing_exp {
            required.insert("exp".to_string());
        }
        validation.required_spec_claims = required;
        // Time checks are done in `check_claims`, not by the library, because:
        // - the library reads the system clock, while we must use the `now_ms` we are given;
        // - one `leeway` cannot reproduce both reference boundaries: expired iff `now − skew ≥ exp`
        //   needs leeway = skew − 1 (impossible for skew 0), while not-active iff
        //   `now + skew < nbf` needs leeway = skew.
        // With `exp` in `required_spec_claims` the library still refuses an absent or non-numeric
        // `exp` (MissingRequiredClaim) — that type check does not depend on `validate_exp`.
        validation.validate_exp = false;
        validation.validate_nbf = false;
        validation.leeway = 0;
        validation.reject_tokens_expiring_in_less_than = 0;

        JwtAuth {
            key: DecodingKey::from_secret(settings.secret.as_bytes()),
            validation,
            issuer: settings.issuer.to_string(),
            audiences,
            scopes_claim: settings.scopes_claim.unwrap_or("scope").to_string(),
            role_claim: settings.role_claim.unwrap_or("role").to_string(),
            user_claim: settings.user_claim.unwrap_or("sub").to_string(),
            default_role: settings.default_role.map(str::to_string),
            default_scopes: settings.default_scopes.map(<[String]>::to_vec),
            skew_seconds,
            allow_missing_exp: settings.allow_missing_exp,
        }
    }

    /// AUTH.md §3.2, steps 0–9, then the identity mapping.
    pub fn authenticate(&self, token: &str, now_ms: u64) -> Result<Principal, AuthError> {
        // 0. "a token is present".
        if token.is_empty() {
            return Err(TOKEN_REQUIRED);
        }
        if token.len() > JWT_BYTES_MAX {
            return Err(TOO_LARGE);
        }
        // 1. "exactly three non-empty dot-separated segments".
        let mut segments = token.split('.');
        let (header, payload, signature) = match (
            segments.next(),
            segments.next(),
            segments.next(),
            segments.next(),
        ) {
            (Some(h), Some(p), Some(s), None)
                if !h.is_empty() && !p.is_empty() && !s.is_empty() =>
            {
                (h, p, s)
            }
            _ => return Err(SEGMENTS),
        };
        // 2. "header and payload are base64url JSON objects".
        let header = decode_object(header).ok_or(NOT_JSON)?;
        let claims = decode_object(payload).ok_or(NOT_JSON)?;
        // 3. "header `alg` is exactly `HS256` (no `none`, no RS*, no case variants)".
        if header.get("alg").and_then(|alg| alg.as_str()) != Some("HS256") {
            return Err(UNSUPPORTED_ALG);
        }
        // Our addition: any `crit` is refused (see UNSUPPORTED_HEADER).
        if header.get("crit").is_some() {
            return Err(UNSUPPORTED_HEADER);
        }
        // 4. "signature segment matches `^[A-Za-z0-9_-]+$`, re-encodes to itself, equals
        // HMAC-SHA256(secret, `header.payload`) in constant time". The alphabet is checked here;
        // the library decodes canonically (no padding, no trailing bits) and compares the MAC in
        // constant time.
        if !signature
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err(BAD_SIGNATURE);
        }
        if let Err(error) =
            jsonwebtoken::decode::<serde::de::IgnoredAny>(token, &self.key, &self.validation)
        {
            return Err(match error.kind() {
                // The header has a registered field of the wrong type (e.g. `"kid": 5`), or a
                // claim appears twice: not JSON the library can trust.
                // A JSON failure either comes from the header, before the signature is checked, or
                // from the claims, after it verified (e.g. `"exp": [1]` or a duplicated claim). Only
                // in the second case may a claim rule speak.
                ErrorKind::Json(_) | ErrorKind::Utf8(_) => match jsonwebtoken::decode_header(token)
                {
                    Ok(_) => self.check_claims(&claims, now_ms).err().unwrap_or(NOT_JSON),
                    Err(_) => NOT_JSON,
                },
                ErrorKind::MissingRequiredClaim(_)
                | ErrorKind::InvalidClaimFormat(_)
                | ErrorKind::ExpiredSignature
                | ErrorKind::ImmatureSignature
                | ErrorKind::InvalidIssuer
                | ErrorKind::InvalidAudience
                | ErrorKind::InvalidSubject => {
                    // The signature verified (claims are validated after it); report the first
                    // failure in the reference order, else the library's own finding.
                    match self.check_claims(&claims, now_ms) {
                        Err(reference) => reference,
                        Ok(()) => map_claims_error(error.kind()),
                    }
                }
                // InvalidSignature, InvalidAlgorithm, Base64, InvalidToken, …
                _ => BAD_SIGNATURE,
            });
        }
        // 5–9 with the exact reference formulas and our clock.
        self.check_claims(&claims, now_ms)?;
        Ok(self.principal(&claims, token))
    }

    /// Steps 5–9 of AUTH.md §3.2, in order.
    fn check_claims(&self, claims: &OwnedValue, now_ms: u64) -> Result<(), AuthError> {
        // 5. "`iss` is a string equal to `issuer`".
        if claims.get("iss").and_then(|iss| iss.as_str()) != Some(self.issuer.as_str()) {
            return Err(BAD_ISSUER);
        }
        // 6. "token `aud` (string, or array whose string elements count) shares at least one value
        // with the configured audience(s)".
        let token_audiences: Vec<&str> = match claims.get("aud") {
            Some(aud) if aud.as_str().is_some() => aud.as_str().into_iter().collect(),
            Some(aud) => aud
                .as_array()
                .map(|items| items.iter().filter_map(|item| item.as_str()).collect())
                .unwrap_or_default(),
            None => Vec::new(),
        };
        if !token_audiences
            .iter()
            .any(|aud| self.audiences.iter().any(|configured| configured == aud))
        {
            return Err(BAD_AUDIENCE);
        }
        // Seconds as f64, like the reference's JavaScript numbers: no integer overflow whatever
        // the claim or skew (i64::MAX skew or a u64::MAX exp compare without wrapping).
        let now = (now_ms / 1000) as f64;
        let skew = self.skew_seconds as f64;
        // 7. "`exp` is a finite number (required)". Stricter than the reference: an `exp` that is
        // present but not a number is refused even under the compatibility switch.
        match claims.get("exp").filter(|exp| !exp.is_null()) {
            None if self.allow_missing_exp => {}
            None => return Err(MISSING_EXP),
            Some(exp) => {
                let exp = exp
                    .cast_f64()
                    .filter(|exp| exp.is_finite())
                    .ok_or(MISSING_EXP)?;
                // 8. "expired when `now − skew ≥ exp`".
                if now - skew >= exp {
                    return Err(EXPIRED);
                }
            }
        }
        // 9. "`nbf`, when a number: not active when `now + skew < nbf`". Stricter than the
        // reference: an `nbf` that is present but not a finite number is refused.
        if let Some(nbf) = claims.get("nbf").filter(|nbf| !nbf.is_null()) {
            let nbf = nbf
                .cast_f64()
                .filter(|nbf| nbf.is_finite())
                .ok_or(NOT_ACTIVE)?;
            if now + skew < nbf {
                return Err(NOT_ACTIVE);
            }
        }
        Ok(())
    }

    /// The identity of a verified token (AUTH.md §3.2 "Identity from the payload").
    fn principal(&self, claims: &OwnedValue, token: &str) -> Principal {
        let mut scopes = match claims.get(self.scopes_claim.as_str()) {
            Some(value) if value.as_str().is_some() => {
                value.as_str().map(split_scopes).unwrap_or_default()
            }
            Some(value) => value
                .as_array()
                .map(|items| {
                    items
                        .iter()
                        .filter_map(|item| item.as_str())
                        .map(str::to_string)
                        .collect()
                })
                .unwrap_or_default(),
            None => Vec::new(),
        };
        if scopes.is_empty() {
            scopes = self.default_scopes.clone().unwrap_or_default();
        }
        let role = claims
            .get(self.role_claim.as_str())
            .and_then(|role| role.as_str())
            .map(str::to_string)
            .or_else(|| self.default_role.clone())
            .unwrap_or_else(|| "operator".to_string());
        // An empty user claim is treated as absent: "" must never match a run owner.
        let user_id = claims
            .get(self.user_claim.as_str())
            .and_then(|user| user.as_str())
            .filter(|user| !user.is_empty())
            .map(str::to_string);
        Principal {
            role,
            scopes,
            user_id,
            token_id: Some(default_token_id(token)),
        }
    }
}

fn map_claims_error(kind: &ErrorKind) -> AuthError {
    match kind {
        ErrorKind::MissingRequiredClaim(claim) | ErrorKind::InvalidClaimFormat(claim) => {
            match claim.as_str() {
                "iss" => BAD_ISSUER,
                "aud" => BAD_AUDIENCE,
                "exp" => MISSING_EXP,
                "nbf" => NOT_ACTIVE,
                _ => INVALID,
            }
        }
        ErrorKind::InvalidIssuer => BAD_ISSUER,
        ErrorKind::InvalidAudience => BAD_AUDIENCE,
        ErrorKind::ExpiredSignature => EXPIRED,
        ErrorKind::ImmatureSignature => NOT_ACTIVE,
        _ => INVALID,
    }
}

/// A base64url (unpadded, canonical) segment holding a JSON object.
fn decode_object(segment: &str) -> Option<OwnedValue> {
    let mut bytes = URL_SAFE_NO_PAD.decode(segment).ok()?;
    let value = simd_json::owned::to_value(&mut bytes).ok()?;
    value.is_object().then_some(value)
}

/// The `jwt_header` fuzz target's properties, shared with the committed-seed replay
/// (`cargo test fuzz_seeds`) so both check the same thing. The input is a token (lossy UTF-8),
/// sent both as `connect.params.auth.token` and as an `Authorization: Bearer` header, to JWT
/// authenticators with a fixed config:
/// - never a panic, whatever the bytes;
/// - with a secret drawn at random per process, never `Ok` (nobody can sign for it);
/// - with a fixed, known secret, `Ok` only when the token independently verifies: three
///   segments, header `alg` exactly `HS256`, and HMAC-SHA256(secret, `header.payload`) equal to the
///   decoded signature.
///
/// This function asserts — panicking is how a fuzz target reports a broken property; it is not
/// called by the server.
#[doc(hidden)]
pub const FUZZ_KNOWN_SECRET: &str = "fuzz-known-secret-0123456789";

#[doc(hidden)]
pub fn check_fuzz_properties(data: &[u8]) {
    use std::sync::OnceLock;
    static RANDOM: OnceLock<super::Authenticator> = OnceLock::new();
    static KNOWN: OnceLock<super::Authenticator> = OnceLock::new();

    let config = |secret: String| crate::config::AuthConfig::Jwt {
        issuer: "smithers".into(),
        audience: OneOrMany::Many(vec!["gateway".into(), "other".into()]),
        secret,
        scopes_claim: None,
        role_claim: None,
        user_claim: None,
        default_role: None,
        default_scopes: None,
        clock_skew_seconds: Some(60),
        allow_missing_exp: false,
        allowed_origins: Vec::new(),
    };
    let random = RANDOM.get_or_init(|| {
        use std::hash::{BuildHasher, Hasher};
        // std's RandomState is seeded from the OS per instance: 4 × 64 random bits, no extra crate.
        let secret: String = (0..4)
            .map(|i| {
                let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
                hasher.write_u32(i);
                format!("{:016x}", hasher.finish())
            })
            .collect();
        super::Authenticator::new(config(secret), None)
    });
    let known = KNOWN
        .get_or_init(|| super::Authenticator::new(config(FUZZ_KNOWN_SECRET.to_string()), None));

    let token = String::from_utf8_lossy(data);
    let no_headers: Vec<(String, String)> = Vec::new();
    let bearer = vec![("authorization".to_string(), format!("Bearer {token}"))];
    for now_ms in [0, 1_800_000_000_000, u64::MAX] {
        assert!(
            random
                .authenticate(&no_headers, Some(&token), now_ms)
                .is_err(),
            "a token verified under a random secret"
        );
        assert!(
            random.authenticate(&bearer, None, now_ms).is_err(),
            "a header token verified under a random secret"
        );
        if known
            .authenticate(&no_headers, Some(&token), now_ms)
            .is_ok()
        {
            assert!(
                independently_verifies(&token, FUZZ_KNOWN_SECRET),
                "accepted a token that does not verify"
            );
        }
    }
}

/// HS256 verification written separately from `JwtAuth` (for the fuzz property only).
fn independently_verifies(token: &str, secret: &str) -> bool {
    use hmac::{Hmac, Mac};
    let parts: Vec<&str> = token.split('.').collect();
    let [header, payload, signature] = parts.as_slice() else {
        return false;
    };
    let alg_ok = decode_object(header)
        .is_some_and(|h| h.get("alg").and_then(|a| a.as_str()) == Some("HS256"));
    let Ok(signature) = URL_SAFE_NO_PAD.decode(signature) else {
        return false;
    };
    let Ok(mut mac) = Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()) else {
        return false;
    };
    mac.update(header.as_bytes());
    mac.update(b".");
    mac.update(payload.as_bytes());
    alg_ok && mac.verify_slice(&signature).is_ok()
}

#[cfg(test)]
#[allow(clippy::indexing_slicing)]
mod tests {
    use super::*;
    use hmac::{Hmac, Mac};
    use serde_json::{json, Value};
    use sha2::Sha256;

    const SECRET: &str = "0123456789abcdef0123456789abcdef";
    const NOW_S: u64 = 1_800_000_000;
    const NOW_MS: u64 = NOW_S * 1000 + 999;

    fn b64(bytes: &[u8]) -> String {
        URL_SAFE_NO_PAD.encode(bytes)
    }

    fn sign(secret: &str, signing_input: &str) -> String {
        let mut mac =
            Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap_or_else(|e| panic!("{e}"));
        mac.update(signing_input.as_bytes());
        b64(&mac.finalize().into_bytes())
    }

    /// Mints a token from raw header and payload JSON text, HMAC-SHA256 signed with `secret`.
    fn mint_raw(header: &str, payload: &str, secret: &str) -> String {
        let input = format!("{}.{}", b64(header.as_bytes()), b64(payload.as_bytes()));
        let signature = sign(secret, &input);
        format!("{input}.{signature}")
    }

    fn mint(header: Value, payload: Value) -> String {
        mint_raw(&header.to_string(), &payload.to_string(), SECRET)
    }

    fn hs256() -> Value {
        json!({"alg": "HS256", "typ": "JWT"})
    }

    fn claims() -> Value {
        json!({"iss": "smithers", "aud": "gateway", "exp": NOW_S + 3600, "sub": "alice", "scope": "run:read run:write", "role": "admin"})
    }

    fn with(mut base: Value, key: &str, value: Value) -> Value {
        base[key] = value;
        base
    }

    fn without(mut base: Value, key: &str) -> Value {
        if let Some(map) = base.as_object_mut() {
            map.remove(key);
        }
        base
    }

    fn auth_with(skew: Option<i64>, allow_missing_exp: bool) -> JwtAuth {
        let audience = OneOrMany::Many(vec!["gateway".into(), "other".into()]);
        JwtAuth::new(JwtSettings {
            issuer: "smithers",
            audience: &audience,
            secret: SECRET,
            scopes_claim: None,
            role_claim: None,
            user_claim: None,
            default_role: None,
            default_scopes: None,
            clock_skew_seconds: skew,
            allow_missing_exp,
        })
    }

    fn auth() -> JwtAuth {
        auth_with(None, false)
    }

    fn check(token: &str) -> Result<Principal, AuthError> {
        auth().authenticate(token, NOW_MS)
    }

    #[test]
    fn valid_token_maps_identity() {
        let token = mint(hs256(), claims());
        let principal = check(&token).unwrap_or_else(|e| panic!("{e:?}"));
        assert_eq!(principal.role, "admin");
        assert_eq!(
            principal.scopes,
            vec!["run:read".to_string(), "run:write".to_string()]
        );
        assert_eq!(principal.user_id.as_deref(), Some("alice"));
        assert_eq!(principal.token_id, Some(default_token_id(&token)));
        // A header without `typ` is fine; `typ`, `kid`, `iat`, `jti` are ignored.
        let token = mint(
            json!({"alg": "HS256"}),
            with(
                with(claims(), "iat", json!(NOW_S + 86_400)),
                "jti",
                json!(7),
            ),
        );
        assert!(check(&token).is_ok());
    }

    #[test]
    fn absent_token_and_segments() {
        assert_eq!(check(""), Err(TOKEN_REQUIRED));
        let token = mint(hs256(), claims());
        let parts: Vec<&str> = token.split('.').collect();
        assert_eq!(check(&format!("{}.{}", parts[0], parts[1])), Err(SEGMENTS));
        assert_eq!(check(&format!("{token}.{}", parts[2])), Err(SEGMENTS));
        assert_eq!(check(&format!("{token}.")), Err(SEGMENTS));
        assert_eq!(check(&format!("{}..{}", parts[0], parts[2])), Err(SEGMENTS));
        assert_eq!(check(&format!("{}.{}.", parts[0], parts[1])), Err(SEGMENTS));
        assert_eq!(check("..."), Err(SEGMENTS));
        assert_eq!(check("abc"), Err(SEGMENTS));
    }

    #[test]
    fn not_json_or_not_objects() {
        let token = mint(hs256(), claims());
        let parts: Vec<&str> = token.split('.').collect();
        for header in [
            "not json",
            "[1,2]",
            "\"HS256\"",
            "null",
            "{\"alg\":\"HS256\"",
        ] {
            let forged = format!("{}.{}.{}", b64(header.as_bytes()), parts[1], parts[2]);
            assert_eq!(check(&forged), Err(NOT_JSON), "{header}");
        }
        let forged = format!("{}.{}.{}", parts[0], b64(b"[]"), parts[2]);
        assert_eq!(check(&forged), Err(NOT_JSON));
        // Non-base64url characters and padding in the header or payload.
        assert_eq!(
            check(&format!("{}=.{}.{}", parts[0], parts[1], parts[2])),
            Err(NOT_JSON)
        );
        assert_eq!(
            check(&format!("{}+/.{}.{}", parts[0], parts[1], parts[2])),
            Err(NOT_JSON)
        );
        assert_eq!(
            check(&format!("{}.{}!.{}", parts[0], parts[1], parts[2])),
            Err(NOT_JSON)
        );
        // A registered header field of the wrong type is refused by the library.
        let token = mint(json!({"alg": "HS256", "kid": 5}), claims());
        assert_eq!(check(&token), Err(NOT_JSON));
    }

    #[test]
    fn algorithms_other_than_hs256_are_refused() {
        for alg in [
            "none", "None", "NONE", "hs256", "HS384", "HS512", "RS256", "ES256", "PS256", "EdDSA",
            "HS256 ", "",
        ] {
            // Signed with HMAC-SHA256 anyway: the header alone decides.
            let token = mint(json!({"alg": alg, "typ": "JWT"}), claims());
            assert_eq!(check(&token), Err(UNSUPPORTED_ALG), "{alg}");
        }
        for alg in [
            json!(null),
            json!(256),
            json!(["HS256"]),
            json!({"alg": "HS256"}),
        ] {
            let token = mint(json!({"alg": alg}), claims());
            assert_eq!(check(&token), Err(UNSUPPORTED_ALG), "{alg}");
        }
        let token = mint(json!({"typ": "JWT"}), claims());
        assert_eq!(check(&token), Err(UNSUPPORTED_ALG));
        // `alg: none` with an empty signature fails at the segment count first.
        let header = b64(br#"{"alg":"none"}"#);
        let payload = b64(claims().to_string().as_bytes());
        assert_eq!(check(&format!("{header}.{payload}.")), Err(SEGMENTS));
        assert_eq!(
            check(&format!("{header}.{payload}.AAAA")),
            Err(UNSUPPORTED_ALG)
        );
    }

    #[test]
    fn signature_failures() {
        let token = mint(hs256(), claims());
        let (input, signature) = token.rsplit_once('.').unwrap_or_else(|| panic!("split"));
        // Wrong secret.
        let wrong = mint_raw(
            &hs256().to_string(),
            &claims().to_string(),
            "another-secret-0123456789",
        );
        assert_eq!(check(&wrong), Err(BAD_SIGNATURE));
        // Empty secret.
        let empty = mint_raw(&hs256().to_string(), &claims().to_string(), "");
        assert_eq!(check(&empty), Err(BAD_SIGNATURE));
        // One flipped bit in the signature.
        let mut raw = URL_SAFE_NO_PAD
            .decode(signature)
            .unwrap_or_else(|e| panic!("{e}"));
        raw[5] ^= 0x01;
        assert_eq!(check(&format!("{input}.{}", b64(&raw))), Err(BAD_SIGNATURE));
        // Truncated signature, and a signature missing one byte.
        assert_eq!(
            check(&format!("{input}.{}", &signature[..signature.len() - 1])),
            Err(BAD_SIGNATURE)
        );
        assert_eq!(
            check(&format!("{input}.{}", b64(&raw[..31]))),
            Err(BAD_SIGNATURE)
        );
        // Trailing bytes after the signature.
        assert_eq!(check(&format!("{token}A")), Err(BAD_SIGNATURE));
        assert_eq!(check(&format!("{token}AAAA")), Err(BAD_SIGNATURE));
        assert_eq!(check(&format!("{token} ")), Err(BAD_SIGNATURE));
        assert_eq!(check(&format!("{token}=")), Err(BAD_SIGNATURE));
        // Non-base64url characters in the signature.
        assert_eq!(
            check(&format!("{input}.{}", signature.replace(['-', '_'], "+"))),
            Err(BAD_SIGNATURE)
        );
        assert_eq!(check(&format!("{input}.{signature}/")), Err(BAD_SIGNATURE));
        // A non-canonical encoding (trailing bits set) of the right MAC does not re-encode to
        // itself and is refused. 32 bytes → 43 chars, the last carrying 2 unused bits.
        let last = signature.as_bytes()[42];
        let alphabet = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
        let position = alphabet
            .iter()
            .position(|c| *c == last)
            .unwrap_or_else(|| panic!("alphabet"));
        let sibling = alphabet[position ^ 1] as char;
        let noncanonical = format!("{input}.{}{sibling}", &signature[..42]);
        assert_eq!(check(&noncanonical), Err(BAD_SIGNATURE));
        // Tampered payload with the old signature.
        let evil = b64(with(claims(), "role", json!("root")).to_string().as_bytes());
        let header = token.split('.').next().unwrap_or_default();
        assert_eq!(
            check(&format!("{header}.{evil}.{signature}")),
            Err(BAD_SIGNATURE)
        );
    }

    #[test]
    fn huge_tokens_are_refused_without_panicking() {
        let big = "a".repeat(20_000);
        let token = mint(hs256(), with(claims(), "pad", json!(big)));
        assert!(token.len() > JWT_BYTES_MAX);
        assert_eq!(check(&token), Err(TOO_LARGE));
        let token = format!(
            "{}.{}.{}",
            "A".repeat(6000),
            "B".repeat(6000),
            "C".repeat(6000)
        );
        assert_eq!(check(&token), Err(TOO_LARGE));
        // Just under the cap: a large but valid token still verifies.
        let pad = "p".repeat(11_000);
        let token = mint(hs256(), with(claims(), "pad", json!(pad)));
        assert!(token.len() <= JWT_BYTES_MAX);
        assert!(check(&token).is_ok());
        // Deep nesting in the payload.
        let deep = format!("{}{}", "[".repeat(3000), "]".repeat(3000));
        let token = mint_raw(&hs256().to_string(), &format!("{{\"x\":{deep}}}"), SECRET);
        assert!(check(&token).is_err());
    }

    #[test]
    fn exp_forms() {
        let missing = mint(hs256(), without(claims(), "exp"));
        assert_eq!(check(&missing), Err(MISSING_EXP));
        for exp in [
            json!("1900000000"),
            json!(null),
            json!(true),
            json!([NOW_S + 3600]),
            json!({"v": 1}),
        ] {
            let token = mint(hs256(), with(claims(), "exp", exp.clone()));
            assert_eq!(check(&token), Err(MISSING_EXP), "{exp}");
        }
        // Negative: a finite number in the past → expired (reference), never an overflow.
        let token = mint(hs256(), with(claims(), "exp", json!(-5)));
        assert_eq!(check(&token), Err(EXPIRED));
        let token = mint(hs256(), with(claims(), "exp", json!(i64::MIN)));
        assert_eq!(check(&token), Err(EXPIRED));
        // Floats: compared exactly like the reference.
        let token = mint(hs256(), with(claims(), "exp", json!(1.5)));
        assert_eq!(check(&token), Err(EXPIRED));
        let token = mint(
            hs256(),
            with(claims(), "exp", json!((NOW_S + 3600) as f64 + 0.25)),
        );
        assert!(check(&token).is_ok());
        // u64::MAX: a validly signed token that never expires is accepted, without overflow.
        let token = mint(hs256(), with(claims(), "exp", json!(u64::MAX)));
        assert!(check(&token).is_ok());
        // Bigger than u64 and 1e300: finite per the reference, but outside what the library types as
        // a NumericDate → refused.
        let token = mint_raw(
            &hs256().to_string(),
            &claims()
                .to_string()
                .replace(&format!("{}", NOW_S + 3600), "1e300"),
            SECRET,
        );
        assert_eq!(check(&token), Err(MISSING_EXP));
        let token = mint_raw(
            &hs256().to_string(),
            &claims()
                .to_string()
                .replace(&format!("{}", NOW_S + 3600), "99999999999999999999999"),
            SECRET,
        );
        assert_eq!(check(&token), Err(MISSING_EXP));
    }

    #[test]
    fn exp_compatibility_switch() {
        let lenient = auth_with(None, true);
        let missing = mint(hs256(), without(claims(), "exp"));
        assert!(lenient.authenticate(&missing, NOW_MS).is_ok());
        let null = mint(hs256(), with(claims(), "exp", json!(null)));
        assert!(lenient.authenticate(&null, NOW_MS).is_ok());
        let string = mint(hs256(), with(claims(), "exp", json!("soon")));
        assert_eq!(lenient.authenticate(&string, NOW_MS), Err(MISSING_EXP));
        let expired = mint(hs256(), with(claims(), "exp", json!(NOW_S - 120)));
        assert_eq!(lenient.authenticate(&expired, NOW_MS), Err(EXPIRED));
    }

    #[test]
    fn exp_boundary_with_default_skew() {
        // "expired when `now − skew ≥ exp`" with skew 60: exp = now−59 ok, now−60 and now−61 expired.
        let at = |offset: i64| {
            check(&mint(
                hs256(),
                with(claims(), "exp", json!(NOW_S as i64 + offset)),
            ))
        };
        assert!(at(-59).is_ok());
        assert_eq!(at(-60), Err(EXPIRED));
        assert_eq!(at(-61), Err(EXPIRED));
        assert!(at(-60).err().is_some_and(|e| e.refresh));
        // now = floor(epoch seconds): 999 ms into the second do not count.
        let token = mint(hs256(), with(claims(), "exp", json!(NOW_S - 59)));
        assert!(auth().authenticate(&token, NOW_S * 1000).is_ok());
        assert!(auth().authenticate(&token, (NOW_S + 1) * 1000 - 1).is_ok());
        assert_eq!(
            auth().authenticate(&token, (NOW_S + 1) * 1000),
            Err(EXPIRED)
        );
    }

    #[test]
    fn skew_zero_negative_and_huge() {
        let token = mint(hs256(), with(claims(), "exp", json!(NOW_S + 1)));
        let zero = auth_with(Some(0), false);
        assert!(zero.authenticate(&token, NOW_MS).is_ok());
        assert_eq!(zero.authenticate(&token, (NOW_S + 1) * 1000), Err(EXPIRED));
        let negative = auth_with(Some(-30), false);
        assert_eq!(
            negative.authenticate(&token, (NOW_S + 1) * 1000),
            Err(EXPIRED)
        );
        let huge = auth_with(Some(i64::MAX), false);
        let old = mint(hs256(), with(claims(), "exp", json!(1)));
        assert!(huge.authenticate(&old, NOW_MS).is_ok());
        let late_nbf = mint(
            hs256(),
            with(
                with(claims(), "nbf", json!(NOW_S + 3600)),
                "exp",
                json!(u64::MAX),
            ),
        );
        assert!(huge.authenticate(&late_nbf, u64::MAX).is_ok());
        assert!(huge.authenticate(&late_nbf, 0).is_ok());
        let far_nbf = mint(hs256(), with(claims(), "nbf", json!(u64::MAX)));
        assert_eq!(huge.authenticate(&far_nbf, u64::MAX), Err(NOT_ACTIVE));
        assert!(zero.authenticate(&mint(hs256(), claims()), 0).is_ok());
    }

    #[test]
    fn nbf_forms() {
        let at = |nbf: Value| check(&mint(hs256(), with(claims(), "nbf", nbf)));
        assert!(at(json!(NOW_S + 59)).is_ok());
        assert!(at(json!(NOW_S + 60)).is_ok());
        assert_eq!(at(json!(NOW_S + 61)), Err(NOT_ACTIVE));
        assert_eq!(at(json!(NOW_S + 61)).err().map(|e| e.refresh), Some(false));
        assert_eq!(at(json!("0")), Err(NOT_ACTIVE));
        assert_eq!(at(json!(true)), Err(NOT_ACTIVE));
        assert!(at(json!(null)).is_ok());
        assert!(at(json!(-1)).is_ok());
        // now is floor(epoch seconds), so with skew 60 the last accepted nbf is now + 60 exactly.
        assert!(at(json!(NOW_S as f64 + 59.5)).is_ok());
        assert_eq!(at(json!(NOW_S as f64 + 60.5)), Err(NOT_ACTIVE));
        assert_eq!(at(json!(u64::MAX)), Err(NOT_ACTIVE));
    }

    #[test]
    fn audience_forms() {
        let at = |aud: Value| check(&mint(hs256(), with(claims(), "aud", aud)));
        assert!(at(json!("gateway")).is_ok());
        assert!(at(json!("other")).is_ok());
        assert!(at(json!(["x", "gateway"])).is_ok());
        assert_eq!(at(json!(["x", "y"])), Err(BAD_AUDIENCE));
        assert_eq!(at(json!([])), Err(BAD_AUDIENCE));
        assert_eq!(at(json!(5)), Err(BAD_AUDIENCE));
        assert_eq!(at(json!("Gateway")), Err(BAD_AUDIENCE));
        assert_eq!(at(json!(null)), Err(BAD_AUDIENCE));
        // Stricter than the reference: a non-string element makes the library refuse the array.
        assert_eq!(at(json!([1, "gateway"])), Err(BAD_AUDIENCE));
        assert_eq!(
            check(&mint(hs256(), without(claims(), "aud"))),
            Err(BAD_AUDIENCE)
        );
        // A single configured audience string.
        let audience = OneOrMany::One("gateway".into());
        let single = JwtAuth::new(JwtSettings {
            issuer: "smithers",
            audience: &audience,
            secret: SECRET,
            scopes_claim: None,
            role_claim: None,
            user_claim: None,
            default_role: None,
            default_scopes: None,
            clock_skew_seconds: None,
            allow_missing_exp: false,
        });
        assert!(single
            .authenticate(&mint(hs256(), claims()), NOW_MS)
            .is_ok());
        assert_eq!(
            single.authenticate(
                &mint(hs256(), with(claims(), "aud", json!("other"))),
                NOW_MS
            ),
            Err(BAD_AUDIENCE)
        );
    }

    #[test]
    fn issuer_forms() {
        let at = |iss: Value| check(&mint(hs256(), with(claims(), "iss", iss)));
        assert_eq!(at(json!("evil")), Err(BAD_ISSUER));
        assert_eq!(at(json!("Smithers")), Err(BAD_ISSUER));
        assert_eq!(at(json!("smithers ")), Err(BAD_ISSUER));
        assert_eq!(at(json!(["smithers"])), Err(BAD_ISSUER));
        assert_eq!(at(json!(null)), Err(BAD_ISSUER));
        assert_eq!(
            check(&mint(hs256(), without(claims(), "iss"))),
            Err(BAD_ISSUER)
        );
    }

    #[test]
    fn reference_order_of_claim_failures() {
        // iss before aud before exp, whatever the library's own order.
        let all_bad = json!({"iss": "evil", "aud": "nobody"});
        assert_eq!(check(&mint(hs256(), all_bad)), Err(BAD_ISSUER));
        let aud_and_exp = json!({"iss": "smithers", "aud": "nobody", "exp": "x"});
        assert_eq!(check(&mint(hs256(), aud_and_exp)), Err(BAD_AUDIENCE));
        let exp_and_nbf = json!({"iss": "smithers", "aud": "gateway", "nbf": NOW_S + 3600});
        assert_eq!(check(&mint(hs256(), exp_and_nbf)), Err(MISSING_EXP));
        // Signature is checked before any claim.
        let bad_everything = mint_raw(&hs256().to_string(), "{}", "wrong-secret-0123456789");
        assert_eq!(check(&bad_everything), Err(BAD_SIGNATURE));
    }

    #[test]
    fn header_extensions() {
        // `kid` with path traversal or SQL: ignored, the token verifies normally.
        for kid in ["../../etc/passwd", "' OR 1=1 --", "/dev/zero", ""] {
            let token = mint(json!({"alg": "HS256", "kid": kid}), claims());
            assert!(check(&token).is_ok(), "{kid}");
        }
        // `jku`, `x5u`, `jwk`: ignored (never fetched, never used as a key).
        let token = mint(
            json!({"alg": "HS256", "jku": "http://127.0.0.1:1/jwks.json", "x5u": "http://127.0.0.1:1/x5u"}),
            claims(),
        );
        assert!(check(&token).is_ok());
        let jwk = json!({"kty": "oct", "k": b64(b"attacker-key")});
        let forged = mint_raw(
            &json!({"alg": "HS256", "jwk": jwk}).to_string(),
            &claims().to_string(),
            "attacker-key",
        );
        assert_eq!(check(&forged), Err(BAD_SIGNATURE));
        // Unknown extra header fields of any type are ignored.
        let token = mint(json!({"alg": "HS256", "x": 1, "y": {"z": [1]}}), claims());
        assert!(check(&token).is_ok());
        // `crit` is refused, whatever its value.
        for crit in [json!(["b64"]), json!([]), json!(null), json!("exp")] {
            let token = mint(json!({"alg": "HS256", "crit": crit}), claims());
            assert_eq!(check(&token), Err(UNSUPPORTED_HEADER), "{crit}");
        }
    }

    #[test]
    fn scope_role_and_user_claims() {
        let scopes = |value: Option<Value>, defaults: Option<&[String]>| {
            let audience = OneOrMany::One("gateway".into());
            let auth = JwtAuth::new(JwtSettings {
                issuer: "smithers",
                audience: &audience,
                secret: SECRET,
                scopes_claim: None,
                role_claim: None,
                user_claim: None,
                default_role: None,
                default_scopes: defaults,
                clock_skew_seconds: None,
                allow_missing_exp: false,
            });
            let payload = match value {
                Some(value) => with(claims(), "scope", value),
                None => without(claims(), "scope"),
            };
            auth.authenticate(&mint(hs256(), payload), NOW_MS)
                .map(|p| p.scopes)
                .unwrap_or_else(|e| panic!("{e:?}"))
        };
        let strings = |items: &[&str]| items.iter().map(|s| s.to_string()).collect::<Vec<String>>();
        assert_eq!(scopes(Some(json!("a b")), None), strings(&["a", "b"]));
        assert_eq!(
            scopes(Some(json!("a,b, c\t,\nd")), None),
            strings(&["a", "b", "c", "d"])
        );
        assert_eq!(
            scopes(Some(json!(["a", 1, "b", null, "c d"])), None),
            strings(&["a", "b", "c d"])
        );
        let defaults = strings(&["run:read"]);
        assert_eq!(scopes(None, Some(&defaults)), defaults);
        assert_eq!(scopes(Some(json!("")), Some(&defaults)), defaults);
        assert_eq!(scopes(Some(json!(" , ")), Some(&defaults)), defaults);
        assert_eq!(scopes(Some(json!([])), Some(&defaults)), defaults);
        assert_eq!(scopes(Some(json!(7)), Some(&defaults)), defaults);
        assert_eq!(scopes(None, None), Vec::<String>::new());

        // Custom claim names, default role.
        let audience = OneOrMany::One("gateway".into());
        let custom = JwtAuth::new(JwtSettings {
            issuer: "smithers",
            audience: &audience,
            secret: SECRET,
            scopes_claim: Some("perms"),
            role_claim: Some("r"),
            user_claim: Some("email"),
            default_role: Some("viewer"),
            default_scopes: None,
            clock_skew_seconds: None,
            allow_missing_exp: false,
        });
        let payload = json!({"iss": "smithers", "aud": "gateway", "exp": NOW_S + 60, "perms": ["cron:read"], "email": "a@x", "sub": "ignored", "role": "admin"});
        let principal = custom
            .authenticate(&mint(hs256(), payload), NOW_MS)
            .unwrap_or_else(|e| panic!("{e:?}"));
        assert_eq!(principal.scopes, strings(&["cron:read"]));
        assert_eq!(principal.role, "viewer");
        assert_eq!(principal.user_id.as_deref(), Some("a@x"));
        // No role claim and no default → operator; non-string user → null; empty user → null.
        let principal = check(&mint(
            hs256(),
            with(without(claims(), "role"), "sub", json!(42)),
        ))
        .unwrap_or_else(|e| panic!("{e:?}"));
        assert_eq!(principal.role, "operator");
        assert_eq!(principal.user_id, None);
        let principal = check(&mint(hs256(), with(claims(), "sub", json!(""))))
            .unwrap_or_else(|e| panic!("{e:?}"));
        assert_eq!(principal.user_id, None);
    }

    #[test]
    fn fuzz_property_oracle_agrees_with_the_verifier() {
        let token = mint_raw(
            &hs256().to_string(),
            &claims().to_string(),
            FUZZ_KNOWN_SECRET,
        );
        assert!(independently_verifies(&token, FUZZ_KNOWN_SECRET));
        assert!(!independently_verifies(&token, SECRET));
        assert!(!independently_verifies(
            &mint(json!({"alg": "HS512"}), claims()),
            SECRET
        ));
        assert!(independently_verifies(&mint(hs256(), claims()), SECRET));
        // A token valid under the known secret exercises the "Ok only if it verifies" branch.
        check_fuzz_properties(token.as_bytes());
        check_fuzz_properties(b"");
        check_fuzz_properties(&[0xff, b'.', 0xfe, b'.', 0x80]);
    }

    #[test]
    fn debug_never_prints_the_secret() {
        let text = format!("{:?}", auth());
        assert!(!text.contains(SECRET), "{text}");
        assert!(!text.contains("0123456789abcdef"), "{text}");
    }
}

#[cfg(test)]
mod fuzz_seeds {
    use super::*;

    /// Replays every committed seed of the `jwt_header` fuzz target: no panic, and never Ok (the
    /// seeds are not signed with this secret).
    #[test]
    fn fuzz_seeds_jwt() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fuzz/seeds/jwt_header");
        let entries = std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{dir}: {e}"));
        let audience = OneOrMany::One("gateway".into());
        let auth = JwtAuth::new(JwtSettings {
            issuer: "smithers",
            audience: &audience,
            secret: "fuzz-seed-secret-not-used-to-sign",
            scopes_claim: None,
            role_claim: None,
            user_claim: None,
            default_role: None,
            default_scopes: None,
            clock_skew_seconds: None,
            allow_missing_exp: false,
        });
        let mut replayed = 0;
        for entry in entries {
            let path = entry.unwrap_or_else(|e| panic!("{e}")).path();
            let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            let token = String::from_utf8_lossy(&bytes);
            for now_ms in [0, 1_800_000_000_000, u64::MAX] {
                assert!(
                    auth.authenticate(&token, now_ms).is_err(),
                    "{} verified",
                    path.display()
                );
            }
            replayed += 1;
        }
        assert!(replayed >= 10, "only {replayed} seeds");
    }
}
