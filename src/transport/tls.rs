//! TLS on the HTTP and TCP listeners (`--tls-cert`): the server side of the
//! handshake, run by the shard that accepted the connection, before the
//! connection is served like a plain one.
//!
//! Each shard holds its own [`ShardTls`]: the configuration handshakes start
//! from (a reload replaces it; connections already up keep the one they
//! started with, since a handshake holds its own reference), with a
//! resumption cache of its own so no lock is shared between cores, and the
//! count of handshakes in flight. Bounds, both counted:
//! - at most `max_handshakes_per_shard` at once: a connection accepted
//!   beyond it is closed at once, unread (`tls_handshakes_refused`), so a
//!   flood of slow handshakes cannot hold a shard's memory;
//! - each must finish within `handshake_timeout_ms`, or the connection is
//!   closed (`tls_handshake_timeouts`).
//!
//! A failed handshake (bad certificate, no shared protocol, garbage) closes
//! the connection (`tls_handshake_failures`); a finished one counts in
//! `tls_handshakes`. With `--tls-client-ca` the client's certificate has
//! been verified by rustls by then, and its subject common name is what the
//! transport reports as the connection's certificate name (the principal
//! under `--auth cert`).

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use futures_lite::io::{AsyncRead, AsyncWrite};
use futures_rustls::TlsAcceptor;

use super::Net;
use crate::config::TlsConfig;

/// Which listener a handshake is for (they differ in ALPN).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Side {
    Http,
    Tcp,
}

/// The longest certificate name kept as a principal; a longer common name
/// is not used.
pub(crate) const CERT_NAME_BYTES_MAX: usize = 256;

/// TLS 1.3 resumption state one shard keeps (rustls' stateful cache: the
/// oldest entry goes at the bound). A client resumes when its next
/// connection lands on the same shard.
pub(crate) const RESUMPTIONS_PER_SHARD: usize = 256;

/// A copy of `config` with a resumption cache of this shard's own: the
/// cache has a lock inside, and one shared by every shard would put a
/// cross-core lock on every handshake.
fn with_own_session_cache(config: &Arc<rustls::ServerConfig>) -> Arc<rustls::ServerConfig> {
    let mut own = (**config).clone();
    own.session_storage = rustls::server::ServerSessionMemoryCache::new(RESUMPTIONS_PER_SHARD);
    Arc::new(own)
}

/// One shard's TLS state.
#[derive(Default)]
pub(crate) struct ShardTls {
    config: RefCell<Option<TlsConfig>>,
    in_flight: Rc<Cell<usize>>,
}

/// What to do with a connection just accepted.
pub(crate) enum Admission {
    /// TLS is off: serve the socket as it is.
    Plain,
    /// Run this handshake first.
    Handshake(Pending),
    /// At the bound on handshakes in flight: close it unread (counted).
    Refused,
}

/// A handshake admitted under the bound; the slot is given back when it is
/// dropped (the handshake finished, failed or timed out).
pub(crate) struct Pending {
    acceptor: TlsAcceptor,
    timeout: Duration,
    slot: Slot,
}

struct Slot(Rc<Cell<usize>>);

impl Drop for Slot {
    fn drop(&mut self) {
        let n = self.0.get();
        assert!(n > 0, "a handshake slot given back twice");
        self.0.set(n - 1);
    }
}

impl ShardTls {
    /// Whether this shard's listeners speak TLS.
    pub fn is_on(&self) -> bool {
        self.config.borrow().is_some()
    }

    /// Installs the configuration new handshakes use (startup and reload).
    /// A reload never turns TLS on or off (that needs a restart, and is
    /// refused before it gets here).
    pub fn set(&self, config: Option<TlsConfig>) {
        let mut c = self.config.borrow_mut();
        assert!(
            c.is_none() || config.is_some(),
            "TLS is never turned off on a running shard"
        );
        *c = config.map(|mut t| {
            t.http = with_own_session_cache(&t.http);
            t.tcp = with_own_session_cache(&t.tcp);
            t
        });
    }

    /// Whether a connection just accepted on `side` is served plain,
    /// handshaken first, or refused at the bound.
    pub fn admit(&self, side: Side) -> Admission {
        let config = self.config.borrow();
        let Some(c) = config.as_ref() else {
            return Admission::Plain;
        };
        let n = self.in_flight.get();
        if n >= c.max_handshakes_per_shard {
            return Admission::Refused;
        }
        self.in_flight.set(n + 1);
        let server: Arc<rustls::ServerConfig> = match side {
            Side::Http => c.http.clone(),
            Side::Tcp => c.tcp.clone(),
        };
        Admission::Handshake(Pending {
            acceptor: TlsAcceptor::from(server),
            timeout: Duration::from_millis(c.handshake_timeout_ms),
            slot: Slot(self.in_flight.clone()),
        })
    }
}

/// A connection after its handshake, and the common name of the client
/// certificate it presented (mTLS), if any.
pub(crate) struct Established<S> {
    pub stream: futures_rustls::server::TlsStream<S>,
    pub cert_name: Option<Rc<str>>,
}

impl Pending {
    /// Runs the handshake on `stream`; None when it failed or timed out
    /// (counted and logged at debug; the caller drops the socket).
    pub async fn run<S>(self, net: &Net, stream: S) -> Option<Established<S>>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let Pending {
            acceptor,
            timeout,
            slot,
        } = self;
        let done = futures_lite::future::or(async { Some(acceptor.accept(stream).await) }, async {
            glommio::timer::sleep(timeout).await;
            None
        })
        .await;
        drop(slot);
        let id = net.core.id;
        let mut m = net.core.metrics.borrow_mut();
        match done {
            None => {
                m.counters.tls_handshake_timeouts += 1;
                log::debug!("shard {id}: TLS handshake timed out");
                None
            }
            Some(Err(e)) => {
                m.counters.tls_handshake_failures += 1;
                log::debug!("shard {id}: TLS handshake failed: {e}");
                None
            }
            Some(Ok(stream)) => {
                m.counters.tls_handshakes += 1;
                let cert_name = stream
                    .get_ref()
                    .1
                    .peer_certificates()
                    .and_then(|chain| chain.first())
                    .and_then(|leaf| common_name(leaf.as_ref()))
                    .map(Rc::from);
                Some(Established { stream, cert_name })
            }
        }
    }
}

/// The subject common name of a DER certificate (the first, if several),
/// when it is a UTF-8, printable or IA5 string of at most
/// `CERT_NAME_BYTES_MAX` bytes.
pub(crate) fn common_name(der: &[u8]) -> Option<String> {
    use x509_cert::der::asn1::ObjectIdentifier;
    use x509_cert::der::{Decode, Tag, Tagged};
    const CN: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.5.4.3");
    let cert = x509_cert::Certificate::from_der(der).ok()?;
    let subject = &cert.tbs_certificate.subject;
    let atv = subject
        .0
        .iter()
        .flat_map(|rdn| rdn.0.iter())
        .find(|atv| atv.oid == CN)?;
    if !matches!(
        atv.value.tag(),
        Tag::Utf8String | Tag::PrintableString | Tag::Ia5String
    ) {
        return None;
    }
    let name = std::str::from_utf8(atv.value.value()).ok()?;
    if name.is_empty() || name.len() > CERT_NAME_BYTES_MAX || name.chars().any(char::is_control) {
        return None;
    }
    Some(name.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cert_with(dn: rcgen::DistinguishedName) -> Vec<u8> {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name = dn;
        params.self_signed(&key).unwrap().der().to_vec()
    }

    #[test]
    fn the_common_name_is_read_from_the_subject() {
        let mut dn = rcgen::DistinguishedName::new();
        dn.push(rcgen::DnType::OrganizationName, "Example Org");
        dn.push(rcgen::DnType::CommonName, "alice");
        assert_eq!(common_name(&cert_with(dn)).as_deref(), Some("alice"));
    }

    #[test]
    fn no_common_name_gives_none() {
        let mut dn = rcgen::DistinguishedName::new();
        dn.push(rcgen::DnType::OrganizationName, "Example Org");
        assert_eq!(common_name(&cert_with(dn)), None);
        assert_eq!(common_name(b"not a certificate"), None);
    }

    #[test]
    fn control_characters_and_long_names_are_refused() {
        let mut dn = rcgen::DistinguishedName::new();
        dn.push(rcgen::DnType::CommonName, "ali\nce");
        assert_eq!(common_name(&cert_with(dn)), None);
        let mut dn = rcgen::DistinguishedName::new();
        dn.push(
            rcgen::DnType::CommonName,
            "a".repeat(CERT_NAME_BYTES_MAX + 1),
        );
        assert_eq!(common_name(&cert_with(dn)), None);
    }
}
