//! `--auth jwt`: checks signed JWT access tokens issued by an authorization
//! server (the OAuth 2.1 resource-server side of MCP authorization).
//!
//! Keys are read once at startup: an HS256 secret, RS256/ES256 public keys
//! in PEM, and/or a JWKS file. A key is bound to one algorithm when it is
//! loaded and a token is only ever checked with keys of the algorithm its
//! header names, so a public key can never be abused as an HMAC secret
//! (algorithm confusion) and `alg: none` matches nothing. Every token must
//! carry `exp` and `aud` (this resource's URI, RFC 8707) and, when issuers
//! are configured, `iss`; `nbf` is honoured when present. The principal is
//! the `sub` claim (configurable); roles come from a claim holding an array
//! of names or a space-separated string (so `scope` works too).

use std::path::{Path, PathBuf};

use jsonwebtoken::{Algorithm, DecodingKey, Validation};

use super::auth::Identity;

/// Largest key or JWKS file read.
pub const KEY_FILE_BYTES_MAX: u64 = 1024 * 1024;
/// Keys tried for one token whose header names no `kid` (bounds the work a
/// forged token can cause).
pub const KEYS_TRIED_MAX: usize = 8;
/// Shortest HS256 secret accepted (RFC 7518 3.2: at least the hash size).
pub const HS256_SECRET_BYTES_MIN: usize = 32;
/// Longest token looked at; anything longer is refused unparsed.
pub const TOKEN_BYTES_MAX: usize = 16 * 1024;

/// What `--auth jwt` is configured with.
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

#[derive(Clone)]
struct Key {
    kid: Option<String>,
    alg: Algorithm,
    key: DecodingKey,
}

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Key({:?}, kid {:?})", self.alg, self.kid)
    }
}

/// Checks tokens; shared read-only by every shard.
#[derive(Debug, Clone)]
pub struct JwtVerifier {
    keys: Vec<Key>,
    issuers: Vec<String>,
    audience: String,
    leeway_s: u64,
    principal_claim: String,
    roles_claim: String,
}

fn read_small(path: &Path) -> Result<Vec<u8>, String> {
    let meta = std::fs::metadata(path).map_err(|e| format!("{}: {e}", path.display()))?;
    if meta.len() > KEY_FILE_BYTES_MAX {
        return Err(format!(
            "{}: larger than {KEY_FILE_BYTES_MAX} bytes",
            path.display()
        ));
    }
    std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))
}

/// The key in a PEM public-key file, with the algorithm its type implies.
fn pem_key(path: &Path) -> Result<Key, String> {
    let pem = read_small(path)?;
    if let Ok(key) = DecodingKey::from_rsa_pem(&pem) {
        return Ok(Key {
            kid: None,
            alg: Algorithm::RS256,
            key,
        });
    }
    if let Ok(key) = DecodingKey::from_ec_pem(&pem) {
        return Ok(Key {
            kid: None,
            alg: Algorithm::ES256,
            key,
        });
    }
    Err(format!(
        "{}: not an RSA or P-256 EC public key in PEM",
        path.display()
    ))
}

fn jwks_keys(path: &Path) -> Result<Vec<Key>, String> {
    use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, JwkSet, KeyAlgorithm};
    let text = read_small(path)?;
    let set: JwkSet =
        serde_json::from_slice(&text).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut out = Vec::new();
    for (i, jwk) in set.keys.iter().enumerate() {
        let declared = jwk.common.key_algorithm;
        let alg = match (&jwk.algorithm, declared) {
            (AlgorithmParameters::RSA(_), None | Some(KeyAlgorithm::RS256)) => Algorithm::RS256,
            (AlgorithmParameters::EllipticCurve(p), None | Some(KeyAlgorithm::ES256))
                if p.curve == EllipticCurve::P256 =>
            {
                Algorithm::ES256
            }
            (AlgorithmParameters::OctetKey(_), None | Some(KeyAlgorithm::HS256)) => {
                Algorithm::HS256
            }
            _ => {
                return Err(format!(
                    "{}: key {i}: only RS256, ES256 (P-256) and HS256 keys are supported",
                    path.display()
                ))
            }
        };
        let key =
            DecodingKey::from_jwk(jwk).map_err(|e| format!("{}: key {i}: {e}", path.display()))?;
        out.push(Key {
            kid: jwk.common.key_id.clone(),
            alg,
            key,
        });
    }
    Ok(out)
}

impl JwtVerifier {
    pub fn load(s: &JwtSettings) -> Result<Self, String> {
        let mut keys = Vec::new();
        if let Some(path) = &s.secret_file {
            let raw = read_small(path)?;
            let secret = raw.trim_ascii();
            if secret.len() < HS256_SECRET_BYTES_MIN {
                return Err(format!(
                    "{}: an HS256 secret needs at least {HS256_SECRET_BYTES_MIN} bytes",
                    path.display()
                ));
            }
            keys.push(Key {
                kid: None,
                alg: Algorithm::HS256,
                key: DecodingKey::from_secret(secret),
            });
        }
        for path in &s.public_keys {
            keys.push(pem_key(path)?);
        }
        if let Some(path) = &s.jwks_file {
            keys.extend(jwks_keys(path)?);
        }
        if keys.is_empty() {
            return Err(
                "--auth jwt needs a key: --jwt-secret-file, --jwt-public-key or --jwt-jwks".into(),
            );
        }
        if s.audience.is_empty() {
            return Err("--auth jwt needs the audience tokens are issued for: --auth-resource URL (or --jwt-audience)".into());
        }
        Ok(Self {
            keys,
            issuers: s.issuers.clone(),
            audience: s.audience.clone(),
            leeway_s: s.leeway_s,
            principal_claim: s.principal_claim.clone(),
            roles_claim: s.roles_claim.clone(),
        })
    }

    pub fn key_count(&self) -> usize {
        self.keys.len()
    }

    /// The identity in `token`, or why it is refused.
    pub fn verify(&self, token: &str) -> Result<Identity, String> {
        if token.len() > TOKEN_BYTES_MAX {
            return Err(format!("token longer than {TOKEN_BYTES_MAX} bytes"));
        }
        let header = jsonwebtoken::decode_header(token).map_err(|_| "not a JWT".to_string())?;
        let candidates: Vec<&Key> = {
            let same_alg = self.keys.iter().filter(|k| k.alg == header.alg);
            match &header.kid {
                Some(kid) if self.keys.iter().any(|k| k.kid.as_deref() == Some(kid)) => {
                    same_alg.filter(|k| k.kid.as_deref() == Some(kid)).collect()
                }
                _ => same_alg.take(KEYS_TRIED_MAX).collect(),
            }
        };
        if candidates.is_empty() {
            return Err(format!("no key for algorithm {:?}", header.alg));
        }
        let mut v = Validation::new(header.alg);
        v.leeway = self.leeway_s;
        v.validate_nbf = true;
        v.set_audience(&[&self.audience]);
        let mut required = vec!["exp", "aud"];
        if !self.issuers.is_empty() {
            v.set_issuer(&self.issuers);
            required.push("iss");
        }
        v.set_required_spec_claims(&required);
        let mut last = String::new();
        for k in candidates {
            match jsonwebtoken::decode::<serde_json::Value>(token, &k.key, &v) {
                Ok(data) => return self.identity(&data.claims),
                Err(e) => last = describe(&e),
            }
        }
        Err(last)
    }

    fn identity(&self, claims: &serde_json::Value) -> Result<Identity, String> {
        let principal = claims
            .get(&self.principal_claim)
            .and_then(|p| p.as_str())
            .filter(|p| !p.is_empty())
            .ok_or_else(|| format!("the token has no `{}` claim", self.principal_claim))?;
        let roles = match claims.get(&self.roles_claim) {
            None | Some(serde_json::Value::Null) => Vec::new(),
            Some(serde_json::Value::String(s)) => s.split_whitespace().map(str::to_owned).collect(),
            Some(serde_json::Value::Array(a)) => a
                .iter()
                .filter_map(|r| r.as_str())
                .map(str::to_owned)
                .collect(),
            Some(_) => {
                return Err(format!(
                    "claim `{}` must be an array of role names or a space-separated string",
                    self.roles_claim
                ))
            }
        };
        Ok(Identity {
            principal: principal.to_owned(),
            roles,
        })
    }
}

fn describe(e: &jsonwebtoken::errors::Error) -> String {
    use jsonwebtoken::errors::ErrorKind as K;
    match e.kind() {
        K::ExpiredSignature => "the token has expired".into(),
        K::ImmatureSignature => "the token is not valid yet (nbf)".into(),
        K::InvalidAudience => "the token is for another audience (aud)".into(),
        K::InvalidIssuer => "the token's issuer is not trusted (iss)".into(),
        K::InvalidSignature => "bad signature".into(),
        K::MissingRequiredClaim(c) => format!("the token has no `{c}` claim"),
        K::InvalidAlgorithm => "algorithm not accepted".into(),
        _ => "malformed token".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{encode, EncodingKey, Header};

    const SECRET: &str = "0123456789abcdef0123456789abcdef-test";

    fn verifier(dir: &Path) -> JwtVerifier {
        let secret = dir.join("secret");
        std::fs::write(&secret, SECRET).unwrap();
        JwtVerifier::load(&JwtSettings {
            secret_file: Some(secret),
            issuers: vec!["https://as.example".into()],
            audience: "https://mcp.example/mcp".into(),
            leeway_s: 0,
            principal_claim: "sub".into(),
            roles_claim: "roles".into(),
            ..Default::default()
        })
        .unwrap()
    }

    fn now() -> u64 {
        jsonwebtoken::get_current_timestamp()
    }

    fn hs(claims: serde_json::Value, secret: &str) -> String {
        encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(secret.as_bytes()),
        )
        .unwrap()
    }

    #[test]
    fn claims_are_checked() {
        let dir = std::env::temp_dir().join(format!("tessera-jwt-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let v = verifier(&dir);
        let good = serde_json::json!({"sub": "alice", "roles": ["reader"], "exp": now() + 60,
            "iss": "https://as.example", "aud": "https://mcp.example/mcp"});
        let id = v.verify(&hs(good.clone(), SECRET)).unwrap();
        assert_eq!(id.principal, "alice");
        assert_eq!(id.roles, vec!["reader"]);
        let with = |k: &str, val: serde_json::Value| {
            let mut c = good.clone();
            c[k] = val;
            hs(c, SECRET)
        };
        assert!(v
            .verify(&with("exp", (now() - 10).into()))
            .unwrap_err()
            .contains("expired"));
        assert!(v
            .verify(&with("nbf", (now() + 100).into()))
            .unwrap_err()
            .contains("nbf"));
        assert!(v
            .verify(&with("aud", "https://other".into()))
            .unwrap_err()
            .contains("aud"));
        assert!(v
            .verify(&with("iss", "https://evil".into()))
            .unwrap_err()
            .contains("iss"));
        assert!(v.verify(&with("roles", "a b".into())).unwrap().roles == vec!["a", "b"]);
        let mut no_exp = good.clone();
        no_exp.as_object_mut().unwrap().remove("exp");
        assert!(v.verify(&hs(no_exp, SECRET)).unwrap_err().contains("exp"));
        assert_eq!(
            v.verify(&hs(good, "another-secret-of-enough-length-0000"))
                .unwrap_err(),
            "bad signature"
        );
        assert!(v.verify("nope").is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn short_secrets_and_no_keys_are_refused() {
        let dir = std::env::temp_dir().join(format!("tessera-jwt-short-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let secret = dir.join("secret");
        std::fs::write(&secret, "short").unwrap();
        let mut s = JwtSettings {
            secret_file: Some(secret),
            audience: "x".into(),
            ..Default::default()
        };
        assert!(JwtVerifier::load(&s).unwrap_err().contains("at least"));
        s.secret_file = None;
        assert!(JwtVerifier::load(&s).unwrap_err().contains("needs a key"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
