//! Network allow and deny lists (`--allow-cidr`, `--deny-cidr`): whether a
//! listener serves a peer, decided from the peer's address alone as the
//! connection is accepted, before any byte of it is read. A refused peer
//! costs one accept and one close, and is counted against the rule that
//! refused it.
//!
//! Why in the transports: it is a property of a socket, and the layer that
//! owns sockets decides it; the MCP layer never sees a refused peer.
//!
//! The decision for a listener (`http`, `tcp` or `admin`) and a peer:
//! 1. a deny rule that applies to the listener (one of its own or a global
//!    one) and contains the address refuses it, counted against the first
//!    such rule in the order given;
//! 2. otherwise, if any allow rule applies to the listener, the address must
//!    be in one of them, else it is refused (counted as [`NOT_ALLOWED`]);
//! 3. otherwise it is served.
//!
//! So deny wins over allow whatever the order, and a listener with no rule
//! serves everyone. An IPv4-mapped IPv6 peer (`::ffff:a.b.c.d`, as a
//! dual-stack `[::]` listener reports IPv4 clients) is matched as its IPv4
//! address. A peer whose address cannot be read is refused by a listener
//! that has any rule (fails closed).
//!
//! Bounds: at most [`RULES_MAX`] rules in all (more is a configuration
//! error); an accept scans them once.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

/// The most rules `--allow-cidr` and `--deny-cidr` may give together.
pub const RULES_MAX: usize = 1024;

/// What a refusal is counted as when no deny rule matched but the
/// listener's allow list did not contain the peer.
pub const NOT_ALLOWED: &str = "not allowed";

/// A listener rules can be scoped to (`http=`, `tcp=`, `admin=`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Listener {
    Http,
    Tcp,
    Admin,
}

impl Listener {
    pub const ALL: [Listener; 3] = [Listener::Http, Listener::Tcp, Listener::Admin];

    pub fn name(self) -> &'static str {
        match self {
            Listener::Http => "http",
            Listener::Tcp => "tcp",
            Listener::Admin => "admin",
        }
    }

    /// Its index in [`Listener::ALL`] (and in per-listener counts).
    pub fn index(self) -> usize {
        self as usize
    }
}

/// An address block: an IPv4 or IPv6 address and a prefix length. The
/// address has no bits set past the prefix.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cidr {
    addr: IpAddr,
    prefix: u8,
}

impl Cidr {
    /// Whether `ip` is in the block (an IPv4-mapped IPv6 address counts as
    /// its IPv4 address).
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, ip.to_canonical()) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = mask_u32(self.prefix);
                u32::from(ip) & mask == u32::from(net)
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = mask_u128(self.prefix);
                u128::from(ip) & mask == u128::from(net)
            }
            _ => false,
        }
    }
}

fn mask_u32(prefix: u8) -> u32 {
    debug_assert!(prefix <= 32);
    u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0)
}

fn mask_u128(prefix: u8) -> u128 {
    debug_assert!(prefix <= 128);
    u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0)
}

impl FromStr for Cidr {
    type Err = String;

    /// `ADDR/PREFIX` or a bare address (a block of one).
    fn from_str(s: &str) -> Result<Self, String> {
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let addr: IpAddr = addr
            .parse()
            .map_err(|_| format!("{s:?} is not an IP address or CIDR block"))?;
        let bits = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => bits,
            Some(p) => match p.parse::<u8>() {
                Ok(n) if n <= bits && !p.starts_with('+') => n,
                _ => return Err(format!("{s:?}: the prefix must be 0 to {bits}")),
            },
        };
        let masked = match addr {
            IpAddr::V4(a) => IpAddr::V4((u32::from(a) & mask_u32(prefix)).into()),
            IpAddr::V6(a) => IpAddr::V6((u128::from(a) & mask_u128(prefix)).into()),
        };
        if masked != addr {
            return Err(format!(
                "{s:?} has bits set past its prefix (the block is {masked}/{prefix})"
            ));
        }
        Ok(Cidr { addr, prefix })
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    Allow,
    Deny,
}

/// One `--allow-cidr` or `--deny-cidr`: `[LISTENER=]CIDR`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rule {
    pub action: Action,
    /// None: every listener.
    pub listener: Option<Listener>,
    pub cidr: Cidr,
    /// How it is named in logs and metrics: `deny 10.0.0.0/8`,
    /// `allow tcp=192.168.0.0/16`.
    pub label: String,
}

impl Rule {
    pub fn parse(action: Action, text: &str) -> Result<Rule, String> {
        let flag = match action {
            Action::Allow => "--allow-cidr",
            Action::Deny => "--deny-cidr",
        };
        let (listener, block) = match text.split_once('=') {
            Some((name, block)) => {
                let l = Listener::ALL
                    .into_iter()
                    .find(|l| l.name() == name)
                    .ok_or_else(|| {
                        format!("{flag} {text:?}: the listener must be http, tcp or admin")
                    })?;
                (Some(l), block)
            }
            None => (None, text),
        };
        let cidr: Cidr = block.parse().map_err(|e| format!("{flag} {e}"))?;
        let verb = match action {
            Action::Allow => "allow",
            Action::Deny => "deny",
        };
        let label = match listener {
            Some(l) => format!("{verb} {}={cidr}", l.name()),
            None => format!("{verb} {cidr}"),
        };
        Ok(Rule {
            action,
            listener,
            cidr,
            label,
        })
    }

    fn applies_to(&self, listener: Listener) -> bool {
        self.listener.is_none_or(|l| l == listener)
    }
}

/// Every allow and deny rule, in the order given.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NetRules {
    rules: Vec<Rule>,
}

/// Why a peer was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal<'a> {
    /// A deny rule contains it.
    Denied(&'a Rule),
    /// The listener has allow rules and none contains it.
    NotAllowed,
}

impl Refusal<'_> {
    /// What the refusal is counted and logged as.
    pub fn label(&self) -> &str {
        match self {
            Refusal::Denied(r) => &r.label,
            Refusal::NotAllowed => NOT_ALLOWED,
        }
    }
}

impl NetRules {
    /// The rules of `--allow-cidr` and `--deny-cidr` (each `[LISTENER=]CIDR`).
    pub fn parse(allow: &[String], deny: &[String]) -> Result<NetRules, String> {
        if allow.len() + deny.len() > RULES_MAX {
            return Err(format!(
                "--allow-cidr and --deny-cidr give {} rules; at most {RULES_MAX}",
                allow.len() + deny.len()
            ));
        }
        let denies = deny.iter().map(|t| Rule::parse(Action::Deny, t));
        let allows = allow.iter().map(|t| Rule::parse(Action::Allow, t));
        let rules = denies.chain(allows).collect::<Result<Vec<_>, _>>()?;
        Ok(NetRules { rules })
    }

    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    pub fn rules(&self) -> &[Rule] {
        &self.rules
    }

    /// Whether `listener` serves `peer` (None: its address could not be
    /// read); `Err` says why not.
    pub fn check(&self, listener: Listener, peer: Option<IpAddr>) -> Result<(), Refusal<'_>> {
        if self.rules.is_empty() {
            return Ok(());
        }
        let mut applying = self.rules.iter().filter(|r| r.applies_to(listener));
        let Some(peer) = peer else {
            return match applying.next() {
                Some(_) => Err(Refusal::NotAllowed),
                None => Ok(()),
            };
        };
        let mut allow_listed = false;
        let mut allowed = false;
        for rule in applying {
            let hit = rule.cidr.contains(peer);
            match rule.action {
                Action::Deny if hit => return Err(Refusal::Denied(rule)),
                Action::Deny => {}
                Action::Allow => {
                    allow_listed = true;
                    allowed |= hit;
                }
            }
        }
        if allow_listed && !allowed {
            return Err(Refusal::NotAllowed);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules(allow: &[&str], deny: &[&str]) -> NetRules {
        let own = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        NetRules::parse(&own(allow), &own(deny)).unwrap()
    }

    fn ip(s: &str) -> Option<IpAddr> {
        Some(s.parse().unwrap())
    }

    #[test]
    fn blocks_parse_strictly_and_match_by_prefix() {
        let c: Cidr = "10.0.0.0/8".parse().unwrap();
        assert!(c.contains("10.255.1.2".parse().unwrap()));
        assert!(!c.contains("11.0.0.1".parse().unwrap()));
        assert!(c.contains("::ffff:10.1.2.3".parse().unwrap()));
        assert!(!c.contains("::1".parse().unwrap()));
        let one: Cidr = "127.0.0.2".parse().unwrap();
        assert_eq!(one.to_string(), "127.0.0.2/32");
        assert!(one.contains("127.0.0.2".parse().unwrap()));
        assert!(!one.contains("127.0.0.1".parse().unwrap()));
        let all: Cidr = "0.0.0.0/0".parse().unwrap();
        assert!(all.contains("203.0.113.9".parse().unwrap()));
        let v6: Cidr = "2001:db8::/32".parse().unwrap();
        assert!(v6.contains("2001:db8:ffff::1".parse().unwrap()));
        assert!(!v6.contains("2001:db9::1".parse().unwrap()));
        assert!("::/0"
            .parse::<Cidr>()
            .unwrap()
            .contains("::1".parse().unwrap()));
        for bad in [
            "10.0.0.1/8",
            "10.0.0.0/33",
            "10.0.0.0/+8",
            "10.0.0.0/",
            "::1/129",
            "host",
            "",
        ] {
            assert!(bad.parse::<Cidr>().is_err(), "{bad}");
        }
    }

    #[test]
    fn deny_wins_and_an_allow_list_refuses_the_rest() {
        let r = rules(&["10.0.0.0/8"], &["10.1.0.0/16"]);
        assert_eq!(r.check(Listener::Tcp, ip("10.2.0.1")), Ok(()));
        let denied = r.check(Listener::Tcp, ip("10.1.0.1")).unwrap_err();
        assert_eq!(denied.label(), "deny 10.1.0.0/16");
        assert_eq!(
            r.check(Listener::Http, ip("192.168.1.1")),
            Err(Refusal::NotAllowed)
        );
        assert_eq!(
            r.check(Listener::Http, ip("::ffff:10.1.9.9"))
                .unwrap_err()
                .label(),
            "deny 10.1.0.0/16"
        );
    }

    #[test]
    fn scoped_rules_apply_to_their_listener_only() {
        let r = rules(&["tcp=127.0.0.3"], &["admin=127.0.0.0/8"]);
        assert_eq!(
            r.check(Listener::Tcp, ip("127.0.0.1")),
            Err(Refusal::NotAllowed)
        );
        assert_eq!(r.check(Listener::Tcp, ip("127.0.0.3")), Ok(()));
        assert_eq!(r.check(Listener::Http, ip("127.0.0.1")), Ok(()));
        assert_eq!(
            r.check(Listener::Admin, ip("127.0.0.3"))
                .unwrap_err()
                .label(),
            "deny admin=127.0.0.0/8"
        );
    }

    #[test]
    fn an_unknown_peer_is_refused_only_where_rules_apply() {
        let r = rules(&[], &["tcp=10.0.0.0/8"]);
        assert_eq!(r.check(Listener::Tcp, None), Err(Refusal::NotAllowed));
        assert_eq!(r.check(Listener::Http, None), Ok(()));
        assert_eq!(NetRules::default().check(Listener::Tcp, None), Ok(()));
    }

    #[test]
    fn listeners_are_counted_in_the_metrics_order() {
        for l in Listener::ALL {
            assert_eq!(crate::metrics::DENIED_LISTENERS[l.index()], l.name());
        }
    }

    #[test]
    fn bad_rules_and_too_many_are_errors() {
        let one = |s: &str| vec![s.to_string()];
        assert!(NetRules::parse(&one("udp=10.0.0.0/8"), &[]).is_err());
        assert!(NetRules::parse(&[], &one("10.0.0.1/8"))
            .unwrap_err()
            .contains("10.0.0.0/8"));
        let many = vec!["10.0.0.0/8".to_string(); RULES_MAX + 1];
        assert!(NetRules::parse(&many, &[]).is_err());
    }
}
