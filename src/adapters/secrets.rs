//! The files behind `--auth`: the hashed tokens file and the JWT keys
//! (HS256 secret, PEM public keys, a JWKS), read once at startup on the main
//! thread, bounded in size, and turned into the `AuthConfig` every shard gets
//! its own copy of.

use std::path::{Path, PathBuf};

use crate::server::auth::{AuthConfig, PrincipalTable, TokenFileError, TokenTable, Verifier};
use crate::server::jwt::{JwtKeyError, JwtPolicy, JwtVerifier, KeySource};

/// Largest tokens file read.
pub(crate) const TOKENS_FILE_BYTES_MAX: u64 = 16 * 1024 * 1024;
/// Largest key or JWKS file read.
pub(crate) const KEY_FILE_BYTES_MAX: u64 = 1024 * 1024;

/// Where `--auth jwt` finds its keys, and what it checks.
#[derive(Debug, Clone, Default)]
pub struct JwtSettings {
    pub secret_file: Option<PathBuf>,
    pub public_keys: Vec<PathBuf>,
    pub jwks_file: Option<PathBuf>,
    pub issuers: Vec<String>,
    pub audience: String,
    pub leeway_s: u64,
    pub principal_claim: String,
    pub roles_claim: String,
}

/// Why the `--auth` files cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum SecretsError {
    #[error("{file}: {source}")]
    Read {
        file: PathBuf,
        source: std::io::Error,
    },
    #[error("{file}: larger than {max} bytes")]
    TooLarge { file: PathBuf, max: u64 },
    #[error("{file}:{source}")]
    Tokens {
        file: PathBuf,
        source: TokenFileError,
    },
    #[error("{file}:{source}")]
    Principals {
        file: PathBuf,
        source: TokenFileError,
    },
    #[error(transparent)]
    Jwt(#[from] JwtKeyError),
}

/// A whole file of at most `max` bytes.
fn read_bounded(path: &Path, max: u64) -> Result<Vec<u8>, SecretsError> {
    let read = |source| SecretsError::Read {
        file: path.to_owned(),
        source,
    };
    let meta = std::fs::metadata(path).map_err(read)?;
    if meta.len() > max {
        return Err(SecretsError::TooLarge {
            file: path.to_owned(),
            max,
        });
    }
    std::fs::read(path).map_err(read)
}

impl AuthConfig {
    /// `--auth token`: the tokens of a file of `sha256:<hex> <principal>
    /// [role,role]` lines (`tessera hash-token` prints one).
    pub fn from_tokens_file(path: &Path) -> Result<Self, SecretsError> {
        let bytes = read_bounded(path, TOKENS_FILE_BYTES_MAX)?;
        let text = String::from_utf8_lossy(&bytes);
        let table = TokenTable::parse(&text).map_err(|source| SecretsError::Tokens {
            file: path.to_owned(),
            source,
        })?;
        Ok(Self::new(Verifier::Tokens(table)))
    }

    /// `--auth cert`: the certificate names of an `--auth-cert-principals`
    /// file.
    pub fn from_principals_file(path: &Path) -> Result<Self, SecretsError> {
        let bytes = read_bounded(path, TOKENS_FILE_BYTES_MAX)?;
        let text = String::from_utf8_lossy(&bytes);
        let table = PrincipalTable::parse(&text).map_err(|source| SecretsError::Principals {
            file: path.to_owned(),
            source,
        })?;
        Ok(Self::new(Verifier::Certs(table)))
    }

    /// `--auth jwt`: tokens signed by the keys `s` names.
    pub fn from_jwt_settings(s: &JwtSettings) -> Result<Self, SecretsError> {
        let mut sources = Vec::new();
        let name = |p: &Path| p.display().to_string();
        if let Some(p) = &s.secret_file {
            sources.push(KeySource::Secret {
                name: name(p),
                bytes: read_bounded(p, KEY_FILE_BYTES_MAX)?,
            });
        }
        for p in &s.public_keys {
            sources.push(KeySource::Pem {
                name: name(p),
                bytes: read_bounded(p, KEY_FILE_BYTES_MAX)?,
            });
        }
        if let Some(p) = &s.jwks_file {
            sources.push(KeySource::Jwks {
                name: name(p),
                bytes: read_bounded(p, KEY_FILE_BYTES_MAX)?,
            });
        }
        let policy = JwtPolicy {
            issuers: s.issuers.clone(),
            audience: s.audience.clone(),
            leeway_s: s.leeway_s,
            principal_claim: s.principal_claim.clone(),
            roles_claim: s.roles_claim.clone(),
        };
        Ok(Self::new(Verifier::Jwt(JwtVerifier::new(
            &sources, &policy,
        )?)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_are_bounded_and_errors_name_them() {
        let dir = std::env::temp_dir().join(format!("tessera-secrets-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let tokens = dir.join("tokens");
        std::fs::write(&tokens, "sha256:00 alice\n").unwrap();
        let e = AuthConfig::from_tokens_file(&tokens)
            .unwrap_err()
            .to_string();
        assert!(e.contains("tokens:1: "), "{e}");
        let missing = AuthConfig::from_tokens_file(&dir.join("nope")).unwrap_err();
        assert!(matches!(missing, SecretsError::Read { .. }));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
