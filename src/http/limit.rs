//! Per-key rate limits: GCRA through governor, one limiter per client key.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::middleware::StateInformationMiddleware;
use governor::state::{InMemoryState, NotKeyed};
use governor::{Quota, RateLimiter};

use crate::domain::auth::{KeysFile, Rate};

type Limiter = RateLimiter<NotKeyed, InMemoryState, DefaultClock, StateInformationMiddleware>;

/// The answer of one check: allowed with what is left, or refused with how long to wait.
#[derive(Debug, Clone, Copy)]
pub enum Decision {
    Allowed { rate: Rate, remaining: u32 },
    Limited { rate: Rate, retry_after: Duration },
}

/// One limiter per key id; rebuilt when the keys file changes, keeping the state of keys whose
/// quota did not change.
#[derive(Default)]
pub struct Limits {
    limiters: HashMap<String, (Rate, Arc<Limiter>)>,
}

fn limiter(rate: Rate) -> Arc<Limiter> {
    let per_second = NonZeroU32::new(rate.per_second).unwrap_or(NonZeroU32::MIN);
    let burst = NonZeroU32::new(rate.burst).unwrap_or(NonZeroU32::MIN);
    Arc::new(RateLimiter::direct(Quota::per_second(per_second).allow_burst(burst)).with_middleware::<StateInformationMiddleware>())
}

impl Limits {
    /// Limiters for the clients of `keys`, reusing those of `previous` whose rate is unchanged.
    pub(crate) fn for_keys(keys: &KeysFile, previous: Option<&Limits>) -> Limits {
        let mut limiters = HashMap::new();
        for c in &keys.clients {
            let kept = previous.and_then(|p| p.limiters.get(&c.key_id)).filter(|(rate, _)| *rate == c.rate).map(|(_, l)| l.clone());
            limiters.insert(c.key_id.clone(), (c.rate, kept.unwrap_or_else(|| limiter(c.rate))));
        }
        Limits { limiters }
    }

    /// Takes one cell from the key's bucket.
    pub fn check(&self, key_id: &str) -> Decision {
        let Some((rate, l)) = self.limiters.get(key_id) else {
            // A key without a limiter (added between two reloads) gets the default quota's answer.
            return Decision::Allowed { rate: Rate::default(), remaining: 0 };
        };
        match l.check() {
            Ok(snapshot) => Decision::Allowed { rate: *rate, remaining: snapshot.remaining_burst_capacity() },
            Err(not_until) => Decision::Limited { rate: *rate, retry_after: not_until.wait_time_from(DefaultClock::default().now()) },
        }
    }
}

impl Decision {
    /// The rate the decision was taken against.
    pub(crate) fn rate(&self) -> Rate {
        match self {
            Decision::Allowed { rate, .. } | Decision::Limited { rate, .. } => *rate,
        }
    }

    /// The IETF `RateLimit-Policy` field: the burst as quota over the window that refills it.
    pub(crate) fn policy_header(&self) -> String {
        let rate = match self {
            Decision::Allowed { rate, .. } | Decision::Limited { rate, .. } => rate,
        };
        let window = rate.burst.div_ceil(rate.per_second.max(1)).max(1);
        format!("\"per-key\";q={};w={}", rate.burst, window)
    }

    /// The IETF `RateLimit` field: what is left and when the next request is possible.
    ///
    /// `t` is the wait before the next request would be allowed, so the two fields agree: while
    /// something is left it is 0; once nothing is (`r=0`, the last request allowed) it is the time
    /// one cell takes to come back, the same wait the next request's 429 would name.
    pub(crate) fn limit_header(&self) -> String {
        match self {
            Decision::Allowed { remaining: 0, rate } => format!("\"per-key\";r=0;t={}", retry_secs(rate.cell_interval())),
            Decision::Allowed { remaining, .. } => format!("\"per-key\";r={remaining};t=0"),
            Decision::Limited { retry_after, .. } => format!("\"per-key\";r=0;t={}", retry_secs(*retry_after)),
        }
    }
}

/// Whole seconds to wait, rounded up, at least one.
pub(crate) fn retry_secs(d: Duration) -> u64 {
    d.as_millis().div_ceil(1000).max(1) as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_over_the_quota_is_limited_and_other_keys_are_not() {
        let mut keys = KeysFile::default();
        keys.add("A", "AAAA", Rate { per_second: 1, burst: 3 }).unwrap();
        keys.add("B", "BBBB", Rate { per_second: 1, burst: 3 }).unwrap();
        let (a, b) = (keys.clients[0].key_id.clone(), keys.clients[1].key_id.clone());
        let limits = Limits::for_keys(&keys, None);
        for left in [2, 1, 0] {
            match limits.check(&a) {
                Decision::Allowed { remaining, .. } => assert_eq!(remaining, left),
                d => panic!("unexpected {d:?}"),
            }
        }
        match limits.check(&a) {
            Decision::Limited { retry_after, .. } => assert!(retry_after > Duration::ZERO),
            d => panic!("unexpected {d:?}"),
        }
        assert!(matches!(limits.check(&b), Decision::Allowed { .. }));
        // A reload with the same rate keeps the spent state.
        let again = Limits::for_keys(&keys, Some(&limits));
        assert!(matches!(again.check(&a), Decision::Limited { .. }));
    }

    #[test]
    fn the_last_allowed_request_names_the_same_wait_as_the_refusal_after_it() {
        let mut keys = KeysFile::default();
        keys.add("A", "AAAA", Rate { per_second: 2, burst: 2 }).unwrap();
        let limits = Limits::for_keys(&keys, None);
        let key = keys.clients[0].key_id.clone();
        assert_eq!(limits.check(&key).limit_header(), "\"per-key\";r=1;t=0");
        let last = limits.check(&key).limit_header();
        let refused = limits.check(&key);
        assert!(matches!(refused, Decision::Limited { .. }));
        // r=0 means "wait": the same t the 429 gives, never t=0.
        assert_eq!(last, refused.limit_header());
        assert_eq!(last, "\"per-key\";r=0;t=1");
    }
}
