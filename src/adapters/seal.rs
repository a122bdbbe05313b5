//! Stored records sealed at rest (`--store-key-file`): every session record,
//! SSE event and task is encrypted and authenticated with
//! XChaCha20-Poly1305 before it reaches the shard's file, so nothing a
//! client sent is readable there, and opened (or refused) when it is read
//! back.
//!
//! Why an adapter: keys are read from a file and records are sealed on the
//! store's writer thread and opened while a shard is prepared, never on an
//! executor.
//!
//! A sealed value is `SEAL_MAGIC` (4 bytes; JSON and SSE text never start
//! with a NUL), the sealing key's id (the first 8 bytes of the SHA-256 of
//! the key), a random 24-byte nonce, then the ciphertext and its 16-byte
//! tag. The table name and the record's key are the associated data, so a
//! sealed value moved to another record does not open.
//!
//! Keys: the key file holds one key per line (64 hex characters, 32 random
//! bytes; `tessera gen-key` prints one; blank lines and `#` comments are
//! skipped). The first key seals; every key opens. Rotation: put a new key
//! first and restart (or upgrade); once every record was rewritten (by its
//! next write, its expiry, or `tessera store rekey`) remove the old key.
//! At most [`KEYS_MAX`] keys.

use std::fmt;
use std::path::Path;

use chacha20poly1305::aead::{Aead, KeyInit, OsRng, Payload};
use chacha20poly1305::{AeadCore, XChaCha20Poly1305, XNonce};
use sha2::{Digest, Sha256};

/// What every sealed value starts with.
pub const SEAL_MAGIC: [u8; 4] = [0, b'T', b'S', 1];
/// Keys a key file may list.
pub const KEYS_MAX: usize = 16;

const KEY_ID_BYTES: usize = 8;
const NONCE_BYTES: usize = 24;
const TAG_BYTES: usize = 16;
const HEADER_BYTES: usize = SEAL_MAGIC.len() + KEY_ID_BYTES + NONCE_BYTES;

/// The keys of `--store-key-file`, first one sealing.
#[derive(Clone, PartialEq, Eq)]
pub struct StoreKeys {
    keys: Vec<[u8; 32]>,
}

impl fmt::Debug for StoreKeys {
    /// Key ids only, never key bytes.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ids: Vec<String> = self.keys.iter().map(|k| hex(&key_id(k))).collect();
        f.debug_struct("StoreKeys").field("ids", &ids).finish()
    }
}

/// Why a stored value did not open.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unopened {
    /// Written without a key (plain JSON or SSE text) while keys are set.
    Plain,
    /// Sealed, but no key given here has its id (or no key is given).
    UnknownKey,
    /// The key matched but the tag did not: altered, truncated or moved.
    Forged,
}

impl fmt::Display for Unopened {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Unopened::Plain => "not sealed, and --store-key-file is set",
            Unopened::UnknownKey => "sealed with a key not in --store-key-file",
            Unopened::Forged => "does not authenticate (altered, truncated or moved)",
        })
    }
}

fn key_id(key: &[u8; 32]) -> [u8; KEY_ID_BYTES] {
    let digest = Sha256::digest(key);
    let mut id = [0; KEY_ID_BYTES];
    id.copy_from_slice(&digest[..KEY_ID_BYTES]);
    id
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn aad(table: &str, key: &str) -> Vec<u8> {
    let mut a = Vec::with_capacity(table.len() + 1 + key.len());
    a.extend_from_slice(table.as_bytes());
    a.push(0);
    a.extend_from_slice(key.as_bytes());
    a
}

/// Whether `value` is a sealed value (by its first bytes).
pub fn is_sealed(value: &[u8]) -> bool {
    value.starts_with(&SEAL_MAGIC)
}

/// A new random key as the key file wants it (64 hex characters).
pub fn gen_key() -> String {
    hex(&XChaCha20Poly1305::generate_key(&mut OsRng))
}

impl StoreKeys {
    /// The keys in `text` (the key file's contents); errors name the line.
    pub fn parse(text: &str) -> Result<StoreKeys, String> {
        let mut keys: Vec<[u8; 32]> = Vec::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let n = i + 1;
            if line.len() != 64 || !line.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(format!(
                    "line {n}: a key is 64 hex characters (tessera gen-key prints one)"
                ));
            }
            let mut key = [0u8; 32];
            for (j, byte) in key.iter_mut().enumerate() {
                *byte = u8::from_str_radix(&line[2 * j..2 * j + 2], 16).expect("hex checked");
            }
            if keys.contains(&key) {
                return Err(format!("line {n}: the same key twice"));
            }
            keys.push(key);
        }
        if keys.is_empty() {
            return Err("no key in the file".into());
        }
        if keys.len() > KEYS_MAX {
            return Err(format!("{} keys; at most {KEYS_MAX}", keys.len()));
        }
        Ok(StoreKeys { keys })
    }

    /// Reads and parses the key file; warns when others may read it.
    pub fn from_file(path: &Path) -> Result<StoreKeys, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        if let Ok(meta) = std::fs::metadata(path) {
            use std::os::unix::fs::PermissionsExt;
            if meta.permissions().mode() & 0o077 != 0 {
                log::warn!(
                    "{}: readable by group or others; chmod 600 it",
                    path.display()
                );
            }
        }
        StoreKeys::parse(&text).map_err(|e| format!("{}: {e}", path.display()))
    }

    /// The id of the sealing key, for logs.
    pub fn sealing_id(&self) -> String {
        hex(&key_id(&self.keys[0]))
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// `plain`, the value of record `key` in `table`, sealed with the first
    /// key.
    pub fn seal(&self, table: &str, key: &str, plain: &[u8]) -> Vec<u8> {
        let k = &self.keys[0];
        let cipher = XChaCha20Poly1305::new(k.into());
        let nonce = XChaCha20Poly1305::generate_nonce(&mut OsRng);
        let aad = aad(table, key);
        let sealed = cipher
            .encrypt(
                &nonce,
                Payload {
                    msg: plain,
                    aad: &aad,
                },
            )
            .expect("XChaCha20-Poly1305 seals any length a record has");
        let mut out = Vec::with_capacity(HEADER_BYTES + sealed.len());
        out.extend_from_slice(&SEAL_MAGIC);
        out.extend_from_slice(&key_id(k));
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&sealed);
        debug_assert_eq!(out.len(), HEADER_BYTES + plain.len() + TAG_BYTES);
        out
    }

    /// The plain value of record `key` in `table`, if it opens with one of
    /// the keys.
    pub fn open(&self, table: &str, key: &str, value: &[u8]) -> Result<Vec<u8>, Unopened> {
        if !is_sealed(value) {
            return Err(Unopened::Plain);
        }
        if value.len() < HEADER_BYTES + TAG_BYTES {
            return Err(Unopened::Forged);
        }
        let id = &value[SEAL_MAGIC.len()..SEAL_MAGIC.len() + KEY_ID_BYTES];
        let k = self
            .keys
            .iter()
            .find(|k| key_id(k) == id)
            .ok_or(Unopened::UnknownKey)?;
        let mut nonce = XNonce::default();
        nonce.copy_from_slice(&value[SEAL_MAGIC.len() + KEY_ID_BYTES..HEADER_BYTES]);
        let aad = aad(table, key);
        XChaCha20Poly1305::new(k.into())
            .decrypt(
                &nonce,
                Payload {
                    msg: &value[HEADER_BYTES..],
                    aad: &aad,
                },
            )
            .map_err(|_| Unopened::Forged)
    }

    /// Whether these keys open what `other`'s first key seals.
    pub fn opens_sealed_by(&self, other: &StoreKeys) -> bool {
        let first = key_id(&other.keys[0]);
        self.keys.iter().any(|k| key_id(k) == first)
    }

    /// Whether `value` is sealed with the first key (nothing to rekey).
    pub fn sealed_with_first(&self, value: &[u8]) -> bool {
        is_sealed(value)
            && value.len() >= HEADER_BYTES
            && value[SEAL_MAGIC.len()..SEAL_MAGIC.len() + KEY_ID_BYTES] == key_id(&self.keys[0])
    }
}

/// How a stored value reads under `keys` (None: no key file): the plain
/// bytes, or why it cannot be served.
pub fn read_value(
    keys: Option<&StoreKeys>,
    table: &str,
    key: &str,
    value: &[u8],
) -> Result<Vec<u8>, Unopened> {
    match keys {
        Some(k) => k.open(table, key, value),
        None if is_sealed(value) => Err(Unopened::UnknownKey),
        None => Ok(value.to_vec()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(n: usize) -> (StoreKeys, Vec<String>) {
        let lines: Vec<String> = (0..n).map(|_| gen_key()).collect();
        (StoreKeys::parse(&lines.join("\n")).unwrap(), lines)
    }

    #[test]
    fn a_sealed_record_opens_only_as_itself_and_hides_its_bytes() {
        let (k, _) = keys(1);
        let plain = br#"{"secret":"client text"}"#;
        let sealed = k.seal("sessions", "abc", plain);
        assert!(is_sealed(&sealed));
        assert!(!sealed.windows(6).any(|w| w == b"secret"));
        assert_eq!(k.open("sessions", "abc", &sealed).unwrap(), plain);
        assert_eq!(k.open("sessions", "abd", &sealed), Err(Unopened::Forged));
        assert_eq!(k.open("tasks", "abc", &sealed), Err(Unopened::Forged));
        let mut bent = sealed.clone();
        *bent.last_mut().unwrap() ^= 1;
        assert_eq!(k.open("sessions", "abc", &bent), Err(Unopened::Forged));
        assert_eq!(
            k.open("sessions", "abc", &sealed[..HEADER_BYTES + 3]),
            Err(Unopened::Forged)
        );
        assert_eq!(k.open("sessions", "abc", plain), Err(Unopened::Plain));
        // Two seals of the same bytes differ (random nonces).
        assert_ne!(sealed, k.seal("sessions", "abc", plain));
    }

    #[test]
    fn the_first_key_seals_and_every_key_opens() {
        let (old, old_lines) = keys(1);
        let sealed_old = old.seal("events", "s/1/2", b"data: x");
        let (_, new_lines) = keys(1);
        let both = StoreKeys::parse(&format!(
            "# rotated\n{}\n\n{}\n",
            new_lines[0], old_lines[0]
        ))
        .unwrap();
        assert_eq!(
            both.open("events", "s/1/2", &sealed_old).unwrap(),
            b"data: x"
        );
        assert!(!both.sealed_with_first(&sealed_old));
        let resealed = both.seal("events", "s/1/2", b"data: x");
        assert!(both.sealed_with_first(&resealed));
        let only_new = StoreKeys::parse(&new_lines[0]).unwrap();
        assert_eq!(
            only_new.open("events", "s/1/2", &sealed_old),
            Err(Unopened::UnknownKey)
        );
        assert_eq!(
            read_value(None, "events", "s/1/2", &resealed),
            Err(Unopened::UnknownKey)
        );
        assert_eq!(
            read_value(None, "events", "k", b"data: y").unwrap(),
            b"data: y"
        );
    }

    #[test]
    fn bad_key_files_are_refused_by_line() {
        let k = gen_key();
        assert!(StoreKeys::parse("").is_err());
        assert!(StoreKeys::parse("# only a comment\n").is_err());
        assert!(StoreKeys::parse(&k[..63]).unwrap_err().contains("line 1"));
        assert!(StoreKeys::parse(&format!("{k}\n{}g", &k[..63]))
            .unwrap_err()
            .contains("line 2"));
        assert!(StoreKeys::parse(&format!("{k}\n{k}"))
            .unwrap_err()
            .contains("twice"));
        let many: Vec<String> = (0..=KEYS_MAX).map(|_| gen_key()).collect();
        assert!(StoreKeys::parse(&many.join("\n")).is_err());
        assert!(!format!("{:?}", StoreKeys::parse(&k).unwrap()).contains(&k));
    }
}
