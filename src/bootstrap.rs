//! First-start bootstrap: with no `auth` configured, the gateway creates an admin token (role
//! `admin`, scopes `["*"]`), keeps it in the data directory (mode 0600) and reuses it on later
//! starts, so a new user can connect at once. The token is printed once by `main`, never logged.

use crate::config::{AuthConfig, TokenGrant};
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

pub const ADMIN_TOKEN_FILE: &str = "admin-token";
/// Random bytes in a generated token (hex-encoded, so 64 characters).
const ADMIN_TOKEN_BYTES: usize = 32;

/// The admin token and whether it was created by this start.
pub struct AdminToken {
    pub token: String,
    pub created: bool,
    pub path: PathBuf,
}

impl std::fmt::Debug for AdminToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminToken")
            .field("token", &"<redacted>")
            .field("created", &self.created)
            .field("path", &self.path)
            .finish()
    }
}

/// Reads the admin token from `data_dir`, creating the directory and the token when absent.
pub fn admin_token(data_dir: &Path) -> std::io::Result<AdminToken> {
    std::fs::create_dir_all(data_dir)?;
    let path = data_dir.join(ADMIN_TOKEN_FILE);
    match std::fs::read_to_string(&path) {
        Ok(text) if !text.trim().is_empty() => {
            return Ok(AdminToken {
                token: text.trim().to_string(),
                created: false,
                path,
            });
        }
        Ok(_) => {}
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
        Err(error) => return Err(error),
    }
    let mut bytes = [0u8; ADMIN_TOKEN_BYTES];
    rand::Rng::fill(&mut rand::thread_rng(), &mut bytes[..]);
    let token = format!(
        "sgw_{}",
        bytes.iter().map(|b| format!("{b:02x}")).collect::<String>()
    );
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(&path)?;
    file.write_all(token.as_bytes())?;
    file.write_all(b"\n")?;
    file.sync_all()?;
    Ok(AdminToken {
        token,
        created: true,
        path,
    })
}

/// The auth mode used when the config has none: token mode with the admin token only.
pub fn admin_auth(token: &str) -> AuthConfig {
    let grant = TokenGrant {
        role: "admin".into(),
        scopes: vec!["*".into()],
        user_id: Some("admin".into()),
        token_id: Some("admin".into()),
        issued_at_ms: None,
        expires_at_ms: None,
        revoked_at_ms: None,
    };
    AuthConfig::Token {
        tokens: BTreeMap::from([(token.to_string(), grant)]),
        allowed_origins: Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn creates_once_then_reuses() {
        let dir = std::env::temp_dir().join(format!("sgw-bootstrap-{}", uuid::Uuid::new_v4()));
        let first = admin_token(&dir).unwrap_or_else(|e| panic!("{e}"));
        assert!(first.created);
        assert_eq!(first.token.len(), 4 + 2 * ADMIN_TOKEN_BYTES);
        let second = admin_token(&dir).unwrap_or_else(|e| panic!("{e}"));
        assert!(!second.created);
        assert_eq!(first.token, second.token);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&first.path)
                .map(|m| m.permissions().mode() & 0o777)
                .unwrap_or(0);
            assert_eq!(mode, 0o600);
        }
        assert!(!format!("{first:?}").contains(&first.token));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
