//! `--auth jwt`: checks signed JWT access tokens issued by an authorization
//! server (the OAuth 2.1 resource-server side of MCP authorization).
//!
//! Key material arrives as bytes (an adapter reads the files once at
//! startup): an HS256 secret, RS256/ES256 public keys in PEM, and/or a JWKS.
//! A key is bound to one algorithm when it is loaded and a token is only
//! ever checked with keys of the algorithm its header names, so a public key
//! can never be abused as an HMAC secret (algorithm confusion) and
//! `alg: none` matches nothing. Every token must carry `exp` and `aud` (this
//! resource's URI, RFC 8707) and, when issuers are configured, `iss`; `nbf`
//! is honoured when present. The principal is the `sub` claim
//! (configurable); roles come from a claim holding an array of names or a
//! space-separated string (so `scope` works too).

use jsonwebtoken::{Algorithm, DecodingKey, Validation};

use super::auth::Identity;

/// Keys tried for one token whose header names no `kid` (bounds the work a
/// forged token can cause).
pub const KEYS_TRIED_MAX: usize = 8;
/// Shortest HS256 secret accepted (RFC 7518 3.2: at least the hash size).
pub const HS256_SECRET_BYTES_MIN: usize = 32;
/// Longest token looked at; anything longer is refused unparsed.
pub const TOKEN_BYTES_MAX: usize = 16 * 1024;

/// One source of keys, as read from its file (`name` says which, in errors).
#[derive(Debug, Clone)]
pub enum KeySource {
    /// An HS256 secret (surrounding whitespace is ignored).
    Secret { name: String, bytes: Vec<u8> },
    /// An RS256 (RSA) or ES256 (P-256) public key in PEM.
    Pem { name: String, bytes: Vec<u8> },
    /// A JWKS document.
    Jwks { name: String, bytes: Vec<u8> },
}

/// What every token is checked against besides its signature.
#[derive(Debug, Clone, Default)]
pub struct JwtPolicy {
    pub issuers: Vec<String>,
    pub audience: String,
    pub leeway_s: u64,
    pub principal_claim: String,
    pub roles_claim: String,
}

/// Why `--auth jwt` cannot be set up with the keys given.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JwtKeyError {
    #[error("{name}: an HS256 secret needs at least {HS256_SECRET_BYTES_MIN} bytes")]
    ShortSecret { name: String },
    #[error("{name}: not an RSA or P-256 EC public key in PEM")]
    NotPem { name: String },
    #[error("{name}: {message}")]
    Jwks { name: String, message: String },
    #[error("--auth jwt needs a key: --jwt-secret-file, --jwt-public-key or --jwt-jwks")]
    NoKey,
    #[error("--auth jwt needs the audience tokens are issued for: --auth-resource URL (or --jwt-audience)")]
    NoAudience,
}

/// Why a token is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JwtError {
    #[error("token longer than {TOKEN_BYTES_MAX} bytes")]
    TooLong,
    #[error("not a JWT")]
    NotJwt,
    #[error("no key for algorithm {0}")]
    NoKey(String),
    #[error("the token has expired")]
    Expired,
    #[error("the token is not valid yet (nbf)")]
    NotYetValid,
    #[error("the token is for another audience (aud)")]
    Audience,
    #[error("the token's issuer is not trusted (iss)")]
    Issuer,
    #[error("bad signature")]
    Signature,
    #[error("the token has no `{0}` claim")]
    MissingClaim(String),
    #[error("algorithm not accepted")]
    Algorithm,
    #[error("malformed token")]
    Malformed,
    #[error("claim `{0}` must be an array of role names or a space-separated string")]
    RolesClaim(String),
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

/// Checks tokens; every shard holds its own copy.
#[derive(Debug, Clone)]
pub struct JwtVerifier {
    keys: Vec<Key>,
    issuers: Vec<String>,
    audience: String,
    leeway_s: u64,
    principal_claim: String,
    roles_claim: String,
}

/// The key in a PEM public key, with the algorithm its type implies.
fn pem_key(name: &str, pem: &[u8]) -> Result<Key, JwtKeyError> {
    if let Ok(key) = DecodingKey::from_rsa_pem(pem) {
        return Ok(Key {
            kid: None,
            alg: Algorithm::RS256,
            key,
        });
    }
    if let Ok(key) = DecodingKey::from_ec_pem(pem) {
        return Ok(Key {
            kid: None,
            alg: Algorithm::ES256,
            key,
        });
    }
    Err(JwtKeyError::NotPem {
        name: name.to_owned(),
    })
}

fn jwks_keys(name: &str, text: &[u8]) -> Result<Vec<Key>, JwtKeyError> {
    use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, JwkSet, KeyAlgorithm};
    let bad = |message: String| JwtKeyError::Jwks {
        name: name.to_owned(),
        message,
    };
    let set: JwkSet = serde_json::from_slice(text).map_err(|e| bad(e.to_string()))?;
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
                return Err(bad(format!(
                    "key {i}: only RS256, ES256 (P-256) and HS256 keys are supported"
                )))
            }
        };
        let key = DecodingKey::from_jwk(jwk).map_err(|e| bad(format!("key {i}: {e}")))?;
        out.push(Key {
            kid: jwk.common.key_id.clone(),
            alg,
            key,
        });
    }
    Ok(out)
}

impl JwtVerifier {
    /// A verifier with the keys of `sources`, checking `s`.
    pub fn new(sources: &[KeySource], s: &JwtPolicy) -> Result<Self, JwtKeyError> {
        let mut keys = Vec::new();
        for source in sources {
            match source {
                KeySource::Secret { name, bytes } => {
                    let secret = bytes.trim_ascii();
                    if secret.len() < HS256_SECRET_BYTES_MIN {
                        return Err(JwtKeyError::ShortSecret { name: name.clone() });
                    }
                    keys.push(Key {
                        kid: None,
                        alg: Algorithm::HS256,
                        key: DecodingKey::from_secret(secret),
                    });
                }
                KeySource::Pem { name, bytes } => keys.push(pem_key(name, bytes)?),
                KeySource::Jwks { name, bytes } => keys.extend(jwks_keys(name, bytes)?),
            }
        }
        if keys.is_empty() {
            return Err(JwtKeyError::NoKey);
        }
        if s.audience.is_empty() {
            return Err(JwtKeyError::NoAudience);
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

    /// When a token [`Self::verify`] accepted stops being accepted (Unix
    /// seconds: its `exp` plus the leeway).
    pub fn expires_at_s(&self, token: &str) -> Option<u64> {
        use base64::Engine;
        let payload = token.split('.').nth(1)?;
        let json = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(payload.trim_end_matches('='))
            .ok()?;
        let claims: serde_json::Value = serde_json::from_slice(&json).ok()?;
        let exp = claims.get("exp")?.as_u64()?;
        Some(exp.saturating_add(self.leeway_s))
    }

    /// The identity in `token`, or why it is refused.
    pub fn verify(&self, token: &str) -> Result<Identity, JwtError> {
        if token.len() > TOKEN_BYTES_MAX {
            return Err(JwtError::TooLong);
        }
        let header = jsonwebtoken::decode_header(token).map_err(|_| JwtError::NotJwt)?;
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
            return Err(JwtError::NoKey(format!("{:?}", header.alg)));
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
        let mut last = JwtError::Malformed;
        for k in candidates {
            match jsonwebtoken::decode::<serde_json::Value>(token, &k.key, &v) {
                Ok(data) => return self.identity(&data.claims),
                Err(e) => last = describe(&e),
            }
        }
        Err(last)
    }

    fn identity(&self, claims: &serde_json::Value) -> Result<Identity, JwtError> {
        let principal = claims
            .get(&self.principal_claim)
            .and_then(|p| p.as_str())
            .filter(|p| !p.is_empty())
            .ok_or_else(|| JwtError::MissingClaim(self.principal_claim.clone()))?;
        let roles = match claims.get(&self.roles_claim) {
            None | Some(serde_json::Value::Null) => Vec::new(),
            Some(serde_json::Value::String(s)) => s.split_whitespace().map(str::to_owned).collect(),
            Some(serde_json::Value::Array(a)) => a
                .iter()
                .filter_map(|r| r.as_str())
                .map(str::to_owned)
                .collect(),
            Some(_) => return Err(JwtError::RolesClaim(self.roles_claim.clone())),
        };
        Ok(Identity {
            principal: principal.to_owned(),
            roles,
        })
    }
}

fn describe(e: &jsonwebtoken::errors::Error) -> JwtError {
    use jsonwebtoken::errors::ErrorKind as K;
    match e.kind() {
        K::ExpiredSignature => JwtError::Expired,
        K::ImmatureSignature => JwtError::NotYetValid,
        K::InvalidAudience => JwtError::Audience,
        K::InvalidIssuer => JwtError::Issuer,
        K::InvalidSignature => JwtError::Signature,
        K::MissingRequiredClaim(c) => JwtError::MissingClaim(c.clone()),
        K::InvalidAlgorithm => JwtError::Algorithm,
        _ => JwtError::Malformed,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{encode, EncodingKey, Header};

    const SECRET: &str = "0123456789abcdef0123456789abcdef-test";

    fn verifier() -> JwtVerifier {
        JwtVerifier::new(
            &[KeySource::Secret {
                name: "secret".into(),
                bytes: SECRET.as_bytes().to_vec(),
            }],
            &JwtPolicy {
                issuers: vec!["https://as.example".into()],
                audience: "https://mcp.example/mcp".into(),
                leeway_s: 0,
                principal_claim: "sub".into(),
                roles_claim: "roles".into(),
            },
        )
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
        let v = verifier();
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
        assert_eq!(
            v.verify(&with("exp", (now() - 10).into())),
            Err(JwtError::Expired)
        );
        assert_eq!(
            v.verify(&with("nbf", (now() + 100).into())),
            Err(JwtError::NotYetValid)
        );
        assert_eq!(
            v.verify(&with("aud", "https://other".into())),
            Err(JwtError::Audience)
        );
        assert_eq!(
            v.verify(&with("iss", "https://evil".into())),
            Err(JwtError::Issuer)
        );
        assert!(v.verify(&with("roles", "a b".into())).unwrap().roles == vec!["a", "b"]);
        let mut no_exp = good.clone();
        no_exp.as_object_mut().unwrap().remove("exp");
        assert_eq!(
            v.verify(&hs(no_exp, SECRET)),
            Err(JwtError::MissingClaim("exp".into()))
        );
        assert_eq!(
            v.verify(&hs(good, "another-secret-of-enough-length-0000")),
            Err(JwtError::Signature)
        );
        assert_eq!(v.verify("nope"), Err(JwtError::NotJwt));
    }

    #[test]
    fn short_secrets_and_no_keys_are_refused() {
        let policy = JwtPolicy {
            audience: "x".into(),
            ..Default::default()
        };
        let short = KeySource::Secret {
            name: "s".into(),
            bytes: b"short".to_vec(),
        };
        assert!(matches!(
            JwtVerifier::new(&[short], &policy),
            Err(JwtKeyError::ShortSecret { .. })
        ));
        assert!(matches!(
            JwtVerifier::new(&[], &policy),
            Err(JwtKeyError::NoKey)
        ));
    }
}
