//! Authentication (`--auth token|jwt`), the OAuth 2.1 resource-server side
//! of MCP authorization: who is calling, and what their roles let them use.
//!
//! Streamable HTTP carries the token in `Authorization: Bearer`; TCP and
//! stdio carry it in a request's `params._meta.authorization` (`initialize`
//! for legacy sessions), see [`META_AUTHORIZATION`].
//!
//! `--auth token`: tokens are never stored in clear: the tokens file holds one
//! `sha256:<hex> <principal> [role,role]` line per token (`tessera
//! hash-token` prints one). A presented token is hashed and compared with
//! every entry in constant time (no early exit, no length leak), so timing
//! says nothing about how close a guess was. The tables are read once at
//! startup (by an adapter) and every shard gets its own copy.
//!
//! Who may use what is decided in one place: [`Access`], consulted by the
//! dispatcher for every method that names a tool, prompt, resource or
//! template (`server::dispatch`), and by the list methods to filter.

use sha2::{Digest, Sha256};

use super::jwt::{JwtError, JwtVerifier};

/// Why a presented token is refused (for the log and the 401's
/// `error_description`; it names no secret).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("the bearer token is not valid")]
    UnknownToken,
    #[error(
        "this server authenticates clients by their TLS certificate (--auth cert), not by token"
    )]
    CertificatesOnly,
    #[error("no client certificate was presented, or its subject has no usable common name")]
    NoCertificate,
    #[error("the client certificate's name {0:?} is not in --auth-cert-principals")]
    UnknownCertificate(String),
    #[error(transparent)]
    Jwt(#[from] JwtError),
}

/// A line of a tokens file that is not one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{line}: {message}")]
pub struct TokenFileError {
    /// 1-based; 0 when the file as a whole is the problem.
    pub line: usize,
    pub message: String,
}

/// One accepted token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenEntry {
    hash: [u8; 32],
    pub principal: String,
    pub roles: Vec<String>,
}

/// Every accepted token.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TokenTable {
    entries: Vec<TokenEntry>,
}

/// Who a valid token says is calling.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub principal: String,
    pub roles: Vec<String>,
}

/// How presented tokens are checked.
#[derive(Debug, Clone)]
pub enum Verifier {
    /// `--auth token`: opaque tokens from a hashed tokens file.
    Tokens(TokenTable),
    /// `--auth jwt`: signed JWTs (signature, exp, nbf, iss, aud).
    Jwt(JwtVerifier),
    /// `--auth cert`: the client certificate verified in the TLS handshake
    /// (`--tls-client-ca`); its subject common name is the principal, and
    /// must be listed to be accepted.
    Certs(PrincipalTable),
}

/// `--auth-cert-principals`: the certificate names accepted as principals
/// under `--auth cert`, each with its roles. One line per name:
/// `<name> [role,role]`, or `"<name with spaces>" [role,role]`; `#`
/// starts a comment line.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PrincipalTable {
    entries: Vec<Identity>,
}

/// Names one principals file may list.
pub const PRINCIPALS_MAX: usize = 100_000;

impl PrincipalTable {
    /// Parses a principals file's text; errors name the line.
    pub fn parse(text: &str) -> Result<Self, TokenFileError> {
        let err = |line: usize, message: &str| TokenFileError {
            line,
            message: message.to_owned(),
        };
        let mut entries: Vec<Identity> = Vec::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (principal, rest) = match line.strip_prefix('"') {
                Some(quoted) => {
                    let end = quoted
                        .find('"')
                        .ok_or_else(|| err(i + 1, "a quoted name needs its closing quote"))?;
                    (&quoted[..end], &quoted[end + 1..])
                }
                None => line.split_at(line.find(char::is_whitespace).unwrap_or(line.len())),
            };
            if principal.is_empty() {
                return Err(err(i + 1, "an empty name"));
            }
            let mut parts = rest.split_whitespace();
            let roles = roles_field(parts.next());
            if parts.next().is_some() {
                return Err(err(i + 1, "expected `<name> [role,role]`"));
            }
            if entries.iter().any(|e| e.principal == principal) {
                return Err(err(i + 1, "this name is listed twice"));
            }
            if entries.len() == PRINCIPALS_MAX {
                return Err(err(i + 1, "more names than a principals file may list"));
            }
            entries.push(Identity {
                principal: principal.to_string(),
                roles,
            });
        }
        if entries.is_empty() {
            return Err(err(0, "no names: every client would be refused"));
        }
        Ok(Self { entries })
    }

    /// The identity listed under `name`.
    pub fn lookup(&self, name: &str) -> Option<&Identity> {
        self.entries.iter().find(|e| e.principal == name)
    }
}

/// Settings of `--auth`; every shard holds its own copy.
#[derive(Debug, Clone)]
pub struct AuthConfig {
    pub verifier: Verifier,
    /// This server's resource URI (RFC 9728 `resource`); when absent it is
    /// `http://<Host><path>` of the request.
    pub resource: Option<String>,
    /// Authorization servers that issue the tokens, published in the
    /// protected-resource metadata.
    pub authorization_servers: Vec<String>,
    /// `[[role]]`s of the config file; empty: every principal may use
    /// everything.
    pub roles: Vec<Role>,
}

/// The well-known path of RFC 9728 protected-resource metadata.
pub(crate) const METADATA_PATH: &str = "/.well-known/oauth-protected-resource";

fn sha256(token: &str) -> [u8; 32] {
    let digest = Sha256::digest(token.as_bytes());
    let mut out = [0u8; 32];
    out.copy_from_slice(&digest);
    out
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> Option<[u8; 32]> {
    if s.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, pair) in s.as_bytes().chunks(2).enumerate() {
        let text = std::str::from_utf8(pair).ok()?;
        out[i] = u8::from_str_radix(text, 16).ok()?;
    }
    Some(out)
}

/// The tokens-file line for `token`.
pub fn hash_line(token: &str, principal: &str, roles: &[String]) -> String {
    let mut line = format!("sha256:{} {principal}", hex(&sha256(token)));
    if !roles.is_empty() {
        line.push(' ');
        line.push_str(&roles.join(","));
    }
    line
}

/// The roles of a `role,role` field (none when absent).
fn roles_field(field: Option<&str>) -> Vec<String> {
    field
        .map(|r| {
            r.split(',')
                .filter(|r| !r.is_empty())
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default()
}

impl TokenTable {
    /// Parses a tokens file's text; errors name the line.
    pub fn parse(text: &str) -> Result<Self, TokenFileError> {
        let err = |line: usize, message: &str| TokenFileError {
            line,
            message: message.to_owned(),
        };
        let mut entries = Vec::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let mut parts = line.split_whitespace();
            let hash = parts
                .next()
                .and_then(|h| h.strip_prefix("sha256:"))
                .and_then(unhex)
                .ok_or_else(|| {
                    err(
                        i + 1,
                        "expected sha256:<64 hex digits> (see tessera hash-token)",
                    )
                })?;
            let principal = parts
                .next()
                .ok_or_else(|| err(i + 1, "expected a principal after the hash"))?
                .to_string();
            let roles = roles_field(parts.next());
            if parts.next().is_some() {
                return Err(err(
                    i + 1,
                    "expected `sha256:<hex> <principal> [role,role]`",
                ));
            }
            entries.push(TokenEntry {
                hash,
                principal,
                roles,
            });
        }
        if entries.is_empty() {
            return Err(err(0, "no tokens: every request would be refused"));
        }
        Ok(Self { entries })
    }

    /// The entry for `token`, comparing with every entry in constant time.
    pub fn authenticate(&self, token: &str) -> Option<&TokenEntry> {
        let h = sha256(token);
        let mut found = None;
        for e in &self.entries {
            let diff = e.hash.iter().zip(&h).fold(0u8, |acc, (a, b)| acc | (a ^ b));
            // Branch-free choice: keep looking at every entry either way.
            let hit = std::hint::black_box(diff) == 0;
            if hit && found.is_none() {
                found = Some(e);
            }
        }
        found
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// One `[[role]]` of the config file: what its holders may use, as name
/// patterns (`*` alone, or one `*` at the start or end, or an exact name;
/// resources match their URI).
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Role {
    pub name: String,
    #[serde(default)]
    pub tools: Vec<String>,
    #[serde(default)]
    pub prompts: Vec<String>,
    #[serde(default)]
    pub resources: Vec<String>,
}

fn pattern_matches(pattern: &str, name: &str) -> bool {
    if pattern == "*" {
        return true;
    }
    if let Some(prefix) = pattern.strip_suffix('*') {
        return name.starts_with(prefix);
    }
    if let Some(suffix) = pattern.strip_prefix('*') {
        return name.ends_with(suffix);
    }
    pattern == name
}

/// What one principal may use: the union of its roles. Absent (no roles
/// configured, or no auth) means everything.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Access {
    pub principal: String,
    tools: Vec<String>,
    prompts: Vec<String>,
    resources: Vec<String>,
}

impl Access {
    pub fn tool(&self, name: &str) -> bool {
        self.tools.iter().any(|p| pattern_matches(p, name))
    }
    pub fn prompt(&self, name: &str) -> bool {
        self.prompts.iter().any(|p| pattern_matches(p, name))
    }
    pub fn resource(&self, uri: &str) -> bool {
        self.resources.iter().any(|p| pattern_matches(p, uri))
    }
}

impl AuthConfig {
    /// Settings with this verifier, no resource URI, no authorization
    /// servers and no roles (every principal may use everything).
    pub fn new(verifier: Verifier) -> Self {
        Self {
            verifier,
            resource: None,
            authorization_servers: Vec::new(),
            roles: Vec::new(),
        }
    }

    /// Who `token` belongs to, or why it is refused.
    pub fn authenticate(&self, token: &str) -> Result<Identity, AuthError> {
        match &self.verifier {
            Verifier::Tokens(t) => t
                .authenticate(token)
                .map(|e| Identity {
                    principal: e.principal.clone(),
                    roles: e.roles.clone(),
                })
                .ok_or(AuthError::UnknownToken),
            Verifier::Jwt(j) => Ok(j.verify(token)?),
            Verifier::Certs(_) => Err(AuthError::CertificatesOnly),
        }
    }

    /// Whether callers are identified by their client certificate
    /// (`--auth cert`) rather than by a token.
    pub fn by_certificate(&self) -> bool {
        matches!(self.verifier, Verifier::Certs(_))
    }

    /// Who the client certificate named `name` (its subject common name,
    /// verified in the handshake) belongs to under `--auth cert`.
    pub fn authenticate_cert(&self, name: Option<&str>) -> Result<Identity, AuthError> {
        let Verifier::Certs(table) = &self.verifier else {
            return Err(AuthError::UnknownToken);
        };
        let name = name.ok_or(AuthError::NoCertificate)?;
        table
            .lookup(name)
            .cloned()
            .ok_or_else(|| AuthError::UnknownCertificate(name.to_string()))
    }

    /// When an accepted `token` expires (Unix seconds), if it does: JWTs.
    pub fn expires_at_s(&self, token: &str) -> Option<u64> {
        match &self.verifier {
            Verifier::Tokens(_) | Verifier::Certs(_) => None,
            Verifier::Jwt(j) => j.expires_at_s(token),
        }
    }

    /// The access of `who` (None: unrestricted, because no roles are
    /// configured).
    pub fn access(&self, who: &Identity) -> Option<Access> {
        if self.roles.is_empty() {
            return None;
        }
        let mut a = Access {
            principal: who.principal.clone(),
            tools: Vec::new(),
            prompts: Vec::new(),
            resources: Vec::new(),
        };
        for role in &who.roles {
            if let Some(r) = self.roles.iter().find(|r| &r.name == role) {
                a.tools.extend(r.tools.iter().cloned());
                a.prompts.extend(r.prompts.iter().cloned());
                a.resources.extend(r.resources.iter().cloned());
            }
        }
        Some(a)
    }

    /// Roles named by tokens but not defined (a typo locks users out).
    /// JWT roles are only known when a token arrives.
    pub fn undefined_roles(&self) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        if self.roles.is_empty() {
            return out;
        }
        let named: Vec<&String> = match &self.verifier {
            Verifier::Tokens(tokens) => tokens.entries.iter().flat_map(|e| &e.roles).collect(),
            Verifier::Certs(names) => names.entries.iter().flat_map(|e| &e.roles).collect(),
            Verifier::Jwt(_) => return out,
        };
        for r in named {
            if !self.roles.iter().any(|d| &d.name == r) && !out.contains(r) {
                out.push(r.clone());
            }
        }
        out
    }
}

/// The bearer token of an `Authorization` header value.
pub(crate) fn bearer(value: &str) -> Option<&str> {
    let (scheme, token) = value.trim().split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_round_trip_and_only_the_right_token_matches() {
        let a = hash_line("s3cret-a", "alice", &["reader".into(), "writer".into()]);
        let b = hash_line("s3cret-b", "bob", &[]);
        let table = TokenTable::parse(&format!("# tokens\n{a}\n\n{b}\n")).unwrap();
        assert_eq!(table.len(), 2);
        let alice = table.authenticate("s3cret-a").unwrap();
        assert_eq!(alice.principal, "alice");
        assert_eq!(alice.roles, vec!["reader", "writer"]);
        assert_eq!(table.authenticate("s3cret-b").unwrap().principal, "bob");
        assert!(table.authenticate("s3cret-c").is_none());
        assert!(table.authenticate("").is_none());
        assert!(!a.contains("s3cret"), "the clear token is not in the line");
    }

    #[test]
    fn bad_lines_name_their_number() {
        assert_eq!(TokenTable::parse("\nnope alice\n").unwrap_err().line, 2);
        assert_eq!(TokenTable::parse("sha256:00 alice\n").unwrap_err().line, 1);
        let ok = hash_line("t", "p", &[]);
        assert_eq!(
            TokenTable::parse(&format!("{ok}\n{ok} x y\n"))
                .unwrap_err()
                .line,
            2
        );
        assert!(TokenTable::parse("# only comments\n").is_err());
    }

    #[test]
    fn roles_grant_by_pattern_and_nothing_else() {
        let tokens = TokenTable::parse(&format!(
            "{}\n{}\n",
            hash_line("a", "alice", &["ops".into(), "reader".into()]),
            hash_line("b", "bob", &["reader".into()])
        ))
        .unwrap();
        let role = |name: &str, tools: &[&str], resources: &[&str]| Role {
            name: name.into(),
            tools: tools.iter().map(|s| s.to_string()).collect(),
            prompts: vec![],
            resources: resources.iter().map(|s| s.to_string()).collect(),
        };
        let who = |name: &str| {
            let e = tokens.entries.iter().find(|e| e.principal == name).unwrap();
            Identity {
                principal: e.principal.clone(),
                roles: e.roles.clone(),
            }
        };
        let cfg = AuthConfig {
            verifier: Verifier::Tokens(tokens.clone()),
            resource: None,
            authorization_servers: vec![],
            roles: vec![
                role("reader", &["kv_get", "echo"], &["kv://*"]),
                role("ops", &["kv_*"], &[]),
            ],
        };
        let bob = cfg.access(&who("bob")).unwrap();
        assert!(bob.tool("echo") && bob.tool("kv_get") && !bob.tool("kv_set"));
        assert!(bob.resource("kv://x") && !bob.resource("file:///etc/passwd"));
        assert!(!bob.prompt("anything"));
        let alice = cfg.access(&who("alice")).unwrap();
        assert!(alice.tool("kv_set") && alice.tool("echo"));
        assert!(cfg.undefined_roles().is_empty());
        let open = AuthConfig {
            roles: vec![],
            ..cfg.clone()
        };
        assert!(
            open.access(&who("bob")).is_none(),
            "no roles configured: unrestricted"
        );
        let typo = AuthConfig {
            roles: vec![role("reader", &[], &[])],
            ..cfg
        };
        assert_eq!(typo.undefined_roles(), vec!["ops".to_string()]);
    }

    #[test]
    fn bearer_values() {
        assert_eq!(bearer("Bearer abc"), Some("abc"));
        assert_eq!(bearer("bearer  abc "), Some("abc"));
        assert_eq!(bearer("Basic abc"), None);
        assert_eq!(bearer("Bearer "), None);
    }

    #[test]
    fn a_principals_file_maps_certificate_names_to_roles() {
        let t = PrincipalTable::parse(
            "# services\nbilling-svc reader,writer\n\"Alice Smith\" admin\nbare\n",
        )
        .unwrap();
        assert_eq!(t.lookup("billing-svc").unwrap().roles, ["reader", "writer"]);
        assert_eq!(t.lookup("Alice Smith").unwrap().roles, ["admin"]);
        assert!(t.lookup("bare").unwrap().roles.is_empty());
        assert!(t.lookup("Alice").is_none());
        let cfg = AuthConfig::new(Verifier::Certs(t));
        assert!(cfg.by_certificate());
        assert_eq!(
            cfg.authenticate_cert(Some("bare")).unwrap().principal,
            "bare"
        );
        assert_eq!(
            cfg.authenticate_cert(Some("mallory")),
            Err(AuthError::UnknownCertificate("mallory".into()))
        );
        assert_eq!(cfg.authenticate_cert(None), Err(AuthError::NoCertificate));
        assert_eq!(cfg.authenticate("bare"), Err(AuthError::CertificatesOnly));
        for (bad, line) in [
            ("a r\na x", 2),
            ("\"open r", 1),
            ("a r extra", 1),
            ("\"\" r", 1),
        ] {
            assert_eq!(PrincipalTable::parse(bad).unwrap_err().line, line, "{bad}");
        }
        assert_eq!(PrincipalTable::parse("# none\n").unwrap_err().line, 0);
    }
}
