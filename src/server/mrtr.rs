//! Multi round-trip requests (2026-07-28, SEP-2322): `requestState` the
//! server hands out and gets back must be tamper-evident, because the server
//! keeps nothing between rounds (the retry may land on any core).
//!
//! State is `base64url(payload) "." base64url(HMAC-SHA256(key, payload))`,
//! where the payload names the method and target it was minted for and when,
//! so state cannot be replayed against another tool or after
//! `mrtr_state_ttl_ms`. The key is drawn from the kernel once per process and
//! copied to every shard.

use std::time::{SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

pub const KEY_BYTES: usize = 32;

/// The signing key (the same on every shard).
#[derive(Clone)]
pub struct StateKey([u8; KEY_BYTES]);

impl std::fmt::Debug for StateKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("StateKey(..)")
    }
}

impl StateKey {
    /// A fresh random key from the kernel's CSPRNG.
    pub fn random() -> Self {
        let mut k = [0u8; KEY_BYTES];
        crate::runtime::random::fill(&mut k);
        StateKey(k)
    }

    /// The key a previous process used (a binary upgrade hands it over, so
    /// requestState and cursors it issued stay valid); None unless it is
    /// [`KEY_BYTES`] long.
    pub fn from_bytes(bytes: &[u8]) -> Option<Self> {
        bytes.try_into().ok().map(StateKey)
    }

    /// The key's bytes, for the next process.
    pub fn bytes(&self) -> &[u8] {
        &self.0
    }

    fn mac(&self, payload: &[u8]) -> Vec<u8> {
        let mut m =
            <Hmac<Sha256> as KeyInit>::new_from_slice(&self.0).expect("HMAC takes any key length");
        m.update(payload);
        m.finalize().into_bytes().to_vec()
    }

    /// Signs `state` (any JSON text chosen by the handler) for `target`
    /// (e.g. `tools/call:name`).
    pub fn seal(&self, target: &str, state: &str) -> String {
        let now_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        let mut payload = Vec::with_capacity(state.len() + target.len() + 32);
        payload.extend_from_slice(now_ms.to_string().as_bytes());
        payload.push(b'\n');
        payload.extend_from_slice(target.as_bytes());
        payload.push(b'\n');
        payload.extend_from_slice(state.as_bytes());
        let tag = self.mac(&payload);
        format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(&payload),
            URL_SAFE_NO_PAD.encode(tag)
        )
    }

    /// Verifies sealed state for `target`; returns the handler's state text.
    pub fn open(&self, target: &str, sealed: &str, ttl_ms: u64) -> Result<String, &'static str> {
        let (p, t) = sealed.split_once('.').ok_or("malformed requestState")?;
        let payload = URL_SAFE_NO_PAD
            .decode(p)
            .map_err(|_| "malformed requestState")?;
        let tag = URL_SAFE_NO_PAD
            .decode(t)
            .map_err(|_| "malformed requestState")?;
        let mut m =
            <Hmac<Sha256> as KeyInit>::new_from_slice(&self.0).expect("HMAC takes any key length");
        m.update(&payload);
        // Constant-time comparison.
        m.verify_slice(&tag)
            .map_err(|_| "requestState failed its integrity check")?;
        let text = std::str::from_utf8(&payload).map_err(|_| "malformed requestState")?;
        let mut parts = text.splitn(3, '\n');
        let issued: u64 = parts
            .next()
            .and_then(|s| s.parse().ok())
            .ok_or("malformed requestState")?;
        let for_target = parts.next().ok_or("malformed requestState")?;
        let state = parts.next().ok_or("malformed requestState")?;
        if for_target != target {
            return Err("requestState was issued for another request");
        }
        let now_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        if now_ms.saturating_sub(issued) > ttl_ms {
            return Err("requestState has expired");
        }
        Ok(state.to_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_state_round_trips_and_resists_tampering() {
        let k = StateKey::random();
        let s = k.seal("tools/call:t", r#"{"round":2}"#);
        assert_eq!(
            k.open("tools/call:t", &s, 60_000).as_deref(),
            Ok(r#"{"round":2}"#)
        );
        assert!(k.open("tools/call:other", &s, 60_000).is_err());
        assert!(k
            .open("tools/call:t", &format!("{s}-TAMPERED"), 60_000)
            .is_err());
        let mut bytes = s.clone().into_bytes();
        bytes[3] ^= 1;
        assert!(k
            .open("tools/call:t", &String::from_utf8_lossy(&bytes), 60_000)
            .is_err());
        assert!(StateKey::random().open("tools/call:t", &s, 60_000).is_err());
        std::thread::sleep(std::time::Duration::from_millis(3));
        assert_eq!(
            k.open("tools/call:t", &s, 1),
            Err("requestState has expired")
        );
    }
}
