//! Per-principal rate limiting: a token bucket per principal, owned by one
//! shard and touched only by it (no atomics, no locks; erlmcp's limiter was
//! a shared table with a race between read and update).
//!
//! A principal's requests are counted where they are served: a TCP/stdio
//! connection on its core, a legacy HTTP session at its owning shard, a
//! stateless HTTP client (keyed by peer address until authentication names
//! principals) at whichever shard accepted the connection. A client that
//! spreads stateless requests over many connections can therefore get up to
//! `shards` times the rate; sessions and connections cannot.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

/// A full bucket refills `burst` tokens; each request takes one.
#[derive(Clone, Copy, Debug)]
pub struct TokenBucket {
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    pub fn full(burst: u32, now: Instant) -> Self {
        Self {
            tokens: burst as f64,
            last: now,
        }
    }

    /// Takes one token, or says how long until one is available.
    pub fn take(&mut self, now: Instant, rate_per_sec: u32, burst: u32) -> Result<(), Duration> {
        let rate = rate_per_sec as f64;
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + elapsed * rate).min(burst as f64);
        self.last = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - self.tokens) / rate))
        }
    }

    /// Whether the bucket has refilled completely (it then carries nothing a
    /// fresh bucket would not).
    fn is_full(&self, now: Instant, rate_per_sec: u32, burst: u32) -> bool {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens + elapsed * rate_per_sec as f64 >= burst as f64
    }
}

/// Who a bucket belongs to.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Principal {
    Session(String),
    Peer(IpAddr),
    /// An authenticated caller (`--auth`) of sessionless requests.
    User(String),
}

impl Principal {
    /// The principal as a key of the cluster-wide limiter.
    pub fn key(&self) -> String {
        match self {
            Principal::Session(s) => format!("session:{s}"),
            Principal::Peer(ip) => format!("peer:{ip}"),
            Principal::User(u) => format!("user:{u}"),
        }
    }
}

/// What the limiter decided for one request.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    Allow,
    /// Over the limit; retry after this long.
    Deny(Duration),
    /// The table was full of active principals: served without a bucket.
    Untracked,
}

/// One shard's buckets for HTTP principals, at most `max` of them.
pub struct RateTable {
    buckets: HashMap<Principal, TokenBucket>,
    max: usize,
}

impl RateTable {
    pub fn new(max: usize) -> Self {
        Self {
            buckets: HashMap::new(),
            max,
        }
    }

    pub fn check(&mut self, who: &Principal, now: Instant, rate: u32, burst: u32) -> Verdict {
        if let Some(b) = self.buckets.get_mut(who) {
            return match b.take(now, rate, burst) {
                Ok(()) => Verdict::Allow,
                Err(wait) => Verdict::Deny(wait),
            };
        }
        if self.buckets.len() >= self.max {
            self.buckets.retain(|_, b| !b.is_full(now, rate, burst));
            if self.buckets.len() >= self.max {
                return Verdict::Untracked;
            }
        }
        let mut b = TokenBucket::full(burst, now);
        let v = match b.take(now, rate, burst) {
            Ok(()) => Verdict::Allow,
            Err(wait) => Verdict::Deny(wait),
        };
        self.buckets.insert(who.clone(), b);
        v
    }

    /// Forgets a principal (its session ended).
    pub fn forget(&mut self, who: &Principal) {
        self.buckets.remove(who);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_allows_burst_then_rate() {
        let t0 = Instant::now();
        let mut b = TokenBucket::full(3, t0);
        assert!(b.take(t0, 10, 3).is_ok());
        assert!(b.take(t0, 10, 3).is_ok());
        assert!(b.take(t0, 10, 3).is_ok());
        let wait = b.take(t0, 10, 3).unwrap_err();
        assert!(wait <= Duration::from_millis(100) && wait > Duration::from_millis(90));
        // 100 ms at 10/s is one token.
        assert!(b.take(t0 + Duration::from_millis(100), 10, 3).is_ok());
        assert!(b.take(t0 + Duration::from_millis(100), 10, 3).is_err());
    }

    #[test]
    fn table_is_bounded_and_evicts_refilled_buckets() {
        let t0 = Instant::now();
        let mut t = RateTable::new(2);
        let a = Principal::Session("a".into());
        let b = Principal::Session("b".into());
        let c = Principal::Session("c".into());
        assert_eq!(t.check(&a, t0, 1, 1), Verdict::Allow);
        assert_eq!(t.check(&b, t0, 1, 1), Verdict::Allow);
        // Both buckets are empty: c cannot evict them.
        assert_eq!(t.check(&c, t0, 1, 1), Verdict::Untracked);
        assert!(matches!(t.check(&a, t0, 1, 1), Verdict::Deny(_)));
        // A second later both have refilled and give way.
        let t1 = t0 + Duration::from_secs(1);
        assert_eq!(t.check(&c, t1, 1, 1), Verdict::Allow);
        assert!(t.buckets.len() <= 2);
    }
}
