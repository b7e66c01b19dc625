//! Pike-style limits on SIP password guessing and scanning (issue 10), sans-IO: every input
//! carries `now`; no clock, no socket. The core asks it before checking credentials and tells
//! it what happened; the driver drops what comes from a blocked source before parsing it.
//!
//! - **Per source address**: `max_failures_per_source` wrong credentials (any number, known or
//!   not), then the address is ignored (no answer at all) for `block_secs`, doubling with every
//!   further block up to `block_max_secs`. Past its budget, each further failure blocks it again.
//! - **Unauthenticated requests per source** (401 challenges, OPTIONS, 405 …): a bucket of
//!   `max_unauthenticated_per_minute` that refills at that rate; empty → blocked the same way. A
//!   source that authenticated recently (for any number) is exempt: a busy phone never runs dry.
//! - **Per account**: `max_failures_per_account` failures from addresses not trusted for that
//!   number, then the number's credentials are not even checked from untrusted addresses (the
//!   request gets no answer) for a doubling time. An address that authenticated successfully for
//!   the number within `trusted_source_secs` is trusted: the real phone keeps registering while
//!   the number is under attack from elsewhere.
//! - A source or account is forgotten after `forget_after_secs` without a failure (and unblocked).
//!
//! A source is an IPv4 address or the /64 of an IPv6 one ([`address_key`]): an attacker who
//! holds a /64 must not get a fresh budget from each of its 2^64 addresses.
//!
//! Memory is bounded: at most `max_tracked` sources and as many accounts (the oldest quiet ones
//! are forgotten first); trusted pairs only come from successful authentications.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use trunkline_protocol::address_key;

/// `[sip_guard]` in the gateway config (see `switch-gateway.example.toml`).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct GuardConfig {
    /// Off: no limit at all (a lab, a benchmark).
    pub enabled: bool,
    /// Wrong credentials one address may send before it is ignored.
    pub max_failures_per_source: u32,
    /// Wrong credentials for one number from all untrusted addresses before the number's
    /// credentials are not checked from untrusted addresses any more.
    pub max_failures_per_account: u32,
    /// Requests answered without authentication (401 challenges, OPTIONS, 405, 481 …) one
    /// untrusted address may send per minute (a bucket of this size, refilled at this rate).
    pub max_unauthenticated_per_minute: u32,
    /// First block, seconds; each further block of the same source or number doubles it …
    pub block_secs: u64,
    /// … up to this.
    pub block_max_secs: u64,
    /// A source or number with no failure for this long (and not blocked) is forgotten.
    pub forget_after_secs: u64,
    /// An address that authenticated for a number within this time is exempt from that
    /// number's budget (and from the unauthenticated budget).
    pub trusted_source_secs: u64,
    /// Sources (and, separately, numbers) tracked at most.
    pub max_tracked: usize,
    /// SIP server transactions kept at most (whether or not `enabled`); past it a request
    /// that needs one gets 503. Challenges and refusals never keep one.
    pub max_server_transactions: usize,
}

impl Default for GuardConfig {
    fn default() -> Self {
        GuardConfig {
            enabled: true,
            max_failures_per_source: 10,
            max_failures_per_account: 30,
            max_unauthenticated_per_minute: 120,
            block_secs: 60,
            block_max_secs: 3600,
            forget_after_secs: 3600,
            trusted_source_secs: 30 * 24 * 3600,
            max_tracked: 100_000,
            max_server_transactions: 10_000,
        }
    }
}

impl GuardConfig {
    pub fn check(&self) -> Result<(), String> {
        if self.max_failures_per_source == 0 || self.max_failures_per_account == 0 || self.max_unauthenticated_per_minute == 0 {
            return Err("sip_guard: the max_* budgets must be > 0 (set enabled = false to turn the limits off)".into());
        }
        if self.block_secs == 0 || self.block_max_secs < self.block_secs {
            return Err("sip_guard: need 0 < block_secs ≤ block_max_secs".into());
        }
        if self.forget_after_secs < self.block_max_secs {
            return Err("sip_guard: forget_after_secs must be ≥ block_max_secs".into());
        }
        if self.max_tracked < 16 {
            return Err("sip_guard: max_tracked must be ≥ 16".into());
        }
        if self.max_server_transactions < 16 {
            return Err("sip_guard: max_server_transactions must be ≥ 16".into());
        }
        Ok(())
    }
}

/// What a new block is about (each is reported once, when it starts).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Blocked {
    /// This source is ignored: an IPv4 address, or an IPv6 /64 (its prefix, the rest zero).
    Source(IpAddr),
    /// This number's credentials are not checked from untrusted addresses.
    Account(String),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BlockEvent {
    pub what: Blocked,
    pub until: Instant,
    pub duration: Duration,
    /// `failures` or `unauthenticated`.
    pub reason: &'static str,
}

/// The answer to an unauthenticated request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Admit {
    Answer,
    /// The source's budget just ran out: drop this request; the source is blocked from now.
    Block(BlockEvent),
    /// Blocked already: drop.
    Drop,
}

struct Source {
    failures: u32,
    tokens: f64,
    refilled: Instant,
    blocks: u32,
    blocked_until: Option<Instant>,
    last: Instant,
}

struct Account {
    failures: u32,
    blocks: u32,
    blocked_until: Option<Instant>,
    last: Instant,
}

pub struct Guard {
    cfg: GuardConfig,
    sources: HashMap<IpAddr, Source>,
    accounts: HashMap<String, Account>,
    /// (number, address) → last successful authentication.
    trusted: HashMap<(String, IpAddr), Instant>,
    /// address → last successful authentication for any number.
    trusted_ips: HashMap<IpAddr, Instant>,
    next_sweep: Option<Instant>,
}

/// Numbers longer than this are tracked by their first characters (a bound on memory).
const MAX_ACCOUNT_KEY: usize = 64;
const SWEEP_EVERY: Duration = Duration::from_secs(10);

impl Guard {
    pub fn new(cfg: GuardConfig) -> Guard {
        Guard {
            cfg,
            sources: HashMap::new(),
            accounts: HashMap::new(),
            trusted: HashMap::new(),
            trusted_ips: HashMap::new(),
            next_sweep: None,
        }
    }

    pub fn config(&self) -> &GuardConfig {
        &self.cfg
    }

    /// Is `ip` being ignored right now?
    pub fn is_blocked(&self, now: Instant, ip: IpAddr) -> bool {
        let ip = address_key(ip);
        self.cfg.enabled && self.sources.get(&ip).and_then(|s| s.blocked_until).is_some_and(|t| t > now)
    }

    /// Must `account`'s credentials from `ip` go unchecked (and unanswered) right now?
    pub fn account_locked(&self, now: Instant, account: &str, ip: IpAddr) -> bool {
        let ip = address_key(ip);
        self.cfg.enabled
            && self.accounts.get(key(account)).and_then(|a| a.blocked_until).is_some_and(|t| t > now)
            && !self.is_trusted(now, account, ip)
    }

    fn is_trusted(&self, now: Instant, account: &str, ip: IpAddr) -> bool {
        let window = Duration::from_secs(self.cfg.trusted_source_secs);
        self.trusted.get(&(key(account).to_string(), ip)).is_some_and(|t| now.saturating_duration_since(*t) <= window)
    }

    fn is_trusted_ip(&self, now: Instant, ip: IpAddr) -> bool {
        let window = Duration::from_secs(self.cfg.trusted_source_secs);
        self.trusted_ips.get(&ip).is_some_and(|t| now.saturating_duration_since(*t) <= window)
    }

    fn block_for(&self, blocks: u32) -> Duration {
        let secs = self.cfg.block_secs.saturating_mul(1u64 << blocks.min(32)).min(self.cfg.block_max_secs);
        Duration::from_secs(secs)
    }

    /// A request from `ip` that will be answered without authentication (a challenge, OPTIONS,
    /// 405 …): spend one from the source's bucket.
    pub fn on_unauthenticated(&mut self, now: Instant, ip: IpAddr) -> Admit {
        let ip = address_key(ip);
        if !self.cfg.enabled {
            return Admit::Answer;
        }
        if self.is_blocked(now, ip) {
            return Admit::Drop;
        }
        if self.is_trusted_ip(now, ip) {
            return Admit::Answer;
        }
        self.maybe_sweep(now);
        let cap = self.cfg.max_unauthenticated_per_minute as f64;
        let s = self.source(now, ip);
        let elapsed = now.saturating_duration_since(s.refilled).as_secs_f64();
        s.tokens = (s.tokens + elapsed * cap / 60.0).min(cap);
        s.refilled = now;
        if s.tokens >= 1.0 {
            s.tokens -= 1.0;
            return Admit::Answer;
        }
        let blocks = s.blocks;
        let d = self.block_for(blocks);
        let s = self.sources.get_mut(&ip).expect("just inserted");
        s.blocks += 1;
        s.blocked_until = Some(now + d);
        s.last = now;
        Admit::Block(BlockEvent { what: Blocked::Source(ip), until: now + d, duration: d, reason: "unauthenticated" })
    }

    /// Wrong credentials for `account` from `ip` (also for a number nobody has: the same
    /// treatment, so the limits tell nothing). Returns the blocks that start now.
    pub fn on_failure(&mut self, now: Instant, ip: IpAddr, account: &str) -> Vec<BlockEvent> {
        let ip = address_key(ip);
        let mut events = vec![];
        if !self.cfg.enabled {
            return events;
        }
        self.maybe_sweep(now);
        let max_src = self.cfg.max_failures_per_source;
        let s = self.source(now, ip);
        s.failures = s.failures.saturating_add(1);
        s.last = now;
        if s.failures >= max_src {
            let blocks = s.blocks;
            let d = self.block_for(blocks);
            let s = self.sources.get_mut(&ip).expect("just inserted");
            s.blocks += 1;
            s.blocked_until = Some(now + d);
            events.push(BlockEvent { what: Blocked::Source(ip), until: now + d, duration: d, reason: "failures" });
        }
        if !self.is_trusted(now, account, ip) {
            let max_acct = self.cfg.max_failures_per_account;
            let a = self.account(now, account);
            a.failures = a.failures.saturating_add(1);
            a.last = now;
            if a.failures >= max_acct && a.blocked_until.is_none_or(|t| t <= now) {
                let blocks = a.blocks;
                let d = self.block_for(blocks);
                let a = self.accounts.get_mut(key(account)).expect("just inserted");
                a.blocks += 1;
                a.blocked_until = Some(now + d);
                events.push(BlockEvent {
                    what: Blocked::Account(key(account).to_string()),
                    until: now + d,
                    duration: d,
                    reason: "failures",
                });
            }
        }
        events
    }

    /// `ip` authenticated as `account`: it is trusted for that number from now on, and its own
    /// failure count starts again.
    pub fn on_success(&mut self, now: Instant, ip: IpAddr, account: &str) {
        let ip = address_key(ip);
        if !self.cfg.enabled {
            return;
        }
        if self.trusted.len() >= self.cfg.max_tracked {
            self.sweep(now);
        }
        if self.trusted.len() < self.cfg.max_tracked || self.trusted.contains_key(&(key(account).to_string(), ip)) {
            self.trusted.insert((key(account).to_string(), ip), now);
            self.trusted_ips.insert(ip, now);
        }
        if let Some(s) = self.sources.get_mut(&ip)
            && s.blocked_until.is_none_or(|t| t <= now)
        {
            s.failures = 0;
        }
    }

    fn source(&mut self, now: Instant, ip: IpAddr) -> &mut Source {
        if !self.sources.contains_key(&ip) && self.sources.len() >= self.cfg.max_tracked {
            self.sweep(now);
            evict(&mut self.sources, now, |s| s.blocked_until, |s| s.last);
        }
        let cap = self.cfg.max_unauthenticated_per_minute as f64;
        self.sources.entry(ip).or_insert(Source {
            failures: 0,
            tokens: cap,
            refilled: now,
            blocks: 0,
            blocked_until: None,
            last: now,
        })
    }

    fn account(&mut self, now: Instant, account: &str) -> &mut Account {
        let k = key(account);
        if !self.accounts.contains_key(k) && self.accounts.len() >= self.cfg.max_tracked {
            self.sweep(now);
            evict(&mut self.accounts, now, |a| a.blocked_until, |a| a.last);
        }
        self.accounts.entry(k.to_string()).or_insert(Account { failures: 0, blocks: 0, blocked_until: None, last: now })
    }

    fn maybe_sweep(&mut self, now: Instant) {
        match self.next_sweep {
            Some(t) if t > now => {}
            _ => {
                self.sweep(now);
                self.next_sweep = Some(now + SWEEP_EVERY);
            }
        }
    }

    /// Forget quiet sources and numbers, and trust that has run out.
    pub fn sweep(&mut self, now: Instant) {
        let forget = Duration::from_secs(self.cfg.forget_after_secs);
        let quiet = |last: Instant, until: Option<Instant>| {
            now.saturating_duration_since(last) > forget && until.is_none_or(|t| t <= now)
        };
        self.sources.retain(|_, s| !quiet(s.last, s.blocked_until));
        self.accounts.retain(|_, a| !quiet(a.last, a.blocked_until));
        let window = Duration::from_secs(self.cfg.trusted_source_secs);
        self.trusted.retain(|_, t| now.saturating_duration_since(*t) <= window);
        self.trusted_ips.retain(|_, t| now.saturating_duration_since(*t) <= window);
    }

    /// Sources and numbers tracked now (for tests and metrics).
    pub fn tracked(&self) -> (usize, usize) {
        (self.sources.len(), self.accounts.len())
    }
}

fn key(account: &str) -> &str {
    match account.char_indices().nth(MAX_ACCOUNT_KEY) {
        Some((i, _)) => &account[..i],
        None => account,
    }
}

/// Make room in a full table: the least recently active entry that is not blocked goes.
fn evict<K: Clone + Eq + std::hash::Hash, V>(
    map: &mut HashMap<K, V>,
    now: Instant,
    until: impl Fn(&V) -> Option<Instant>,
    last: impl Fn(&V) -> Instant,
) {
    let victim =
        map.iter().filter(|(_, v)| until(v).is_none_or(|t| t <= now)).min_by_key(|(_, v)| last(v)).map(|(k, _)| k.clone());
    match victim {
        Some(k) => {
            map.remove(&k);
        }
        // Everything is blocked: the oldest block goes.
        None => {
            if let Some(k) = map.iter().min_by_key(|(_, v)| last(v)).map(|(k, _)| k.clone()) {
                map.remove(&k);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn cfg() -> GuardConfig {
        GuardConfig {
            max_failures_per_source: 3,
            max_failures_per_account: 5,
            max_unauthenticated_per_minute: 6,
            block_secs: 10,
            block_max_secs: 40,
            forget_after_secs: 100,
            trusted_source_secs: 1000,
            ..GuardConfig::default()
        }
    }

    #[test]
    fn a_source_is_blocked_after_its_failure_budget_for_a_doubling_time() {
        let mut g = Guard::new(cfg());
        let t0 = Instant::now();
        let a = ip("203.0.113.7");
        assert!(g.on_failure(t0, a, "1001").is_empty());
        assert!(g.on_failure(t0, a, "1001").is_empty());
        let ev = g.on_failure(t0, a, "1001");
        assert_eq!(
            ev,
            vec![BlockEvent {
                what: Blocked::Source(a),
                until: t0 + Duration::from_secs(10),
                duration: Duration::from_secs(10),
                reason: "failures"
            }]
        );
        assert!(g.is_blocked(t0, a));
        assert!(g.is_blocked(t0 + Duration::from_secs(9), a));
        assert!(!g.is_blocked(t0 + Duration::from_secs(10), a));
        assert!(!g.is_blocked(t0, ip("203.0.113.8")), "other addresses are not affected");
        // Past the budget every further failure blocks again, twice as long, up to the max.
        let mut t = t0 + Duration::from_secs(10);
        for want in [20, 40, 40] {
            let ev = g.on_failure(t, a, "1001");
            assert_eq!(ev[0].duration, Duration::from_secs(want));
            t += Duration::from_secs(want);
            assert!(!g.is_blocked(t, a));
        }
    }

    #[test]
    fn a_quiet_source_is_forgotten_and_gets_its_budget_back() {
        let mut g = Guard::new(cfg());
        let t0 = Instant::now();
        let a = ip("203.0.113.7");
        for _ in 0..3 {
            g.on_failure(t0, a, "1001");
        }
        let later = t0 + Duration::from_secs(10 + 101);
        g.sweep(later);
        assert_eq!(g.tracked().0, 0);
        assert!(g.on_failure(later, a, "1001").is_empty(), "a fresh budget");
        assert!(g.on_failure(later, a, "1001").is_empty());
        assert_eq!(g.on_failure(later, a, "1001")[0].duration, Duration::from_secs(10), "and the first block length again");
    }

    #[test]
    fn success_resets_the_source_count() {
        let mut g = Guard::new(cfg());
        let t0 = Instant::now();
        let a = ip("192.168.1.50");
        g.on_failure(t0, a, "1001");
        g.on_failure(t0, a, "1001");
        g.on_success(t0, a, "1001");
        assert!(g.on_failure(t0, a, "1001").is_empty());
        assert!(g.on_failure(t0, a, "1001").is_empty());
    }

    #[test]
    fn the_account_budget_spares_the_address_the_real_phone_uses() {
        let mut g = Guard::new(cfg());
        let t0 = Instant::now();
        let phone = ip("192.168.1.50");
        g.on_success(t0, phone, "1001");
        // Five attackers, one guess each: the number's budget runs out.
        let mut events = vec![];
        for i in 1..=5 {
            events.extend(g.on_failure(t0, ip(&format!("198.51.100.{i}")), "1001"));
        }
        assert_eq!(events.len(), 1);
        assert_eq!(events[0].what, Blocked::Account("1001".into()));
        assert!(g.account_locked(t0, "1001", ip("198.51.100.99")), "an untrusted address is not even checked");
        assert!(!g.account_locked(t0, "1001", phone), "the phone's own address still is");
        assert!(!g.account_locked(t0, "1002", ip("198.51.100.99")), "other numbers are not affected");
        // The phone's own wrong password counts against its address only, not the number.
        let t1 = t0 + Duration::from_secs(11);
        assert!(!g.account_locked(t1, "1001", ip("198.51.100.99")));
        g.on_failure(t1, phone, "1001");
        assert!(!g.account_locked(t1, "1001", ip("198.51.100.99")));
        // The next untrusted failure locks the number again, for twice as long.
        let ev = g.on_failure(t1, ip("198.51.100.6"), "1001");
        assert_eq!(ev.iter().find(|e| matches!(e.what, Blocked::Account(_))).unwrap().duration, Duration::from_secs(20));
    }

    #[test]
    fn trust_runs_out() {
        let mut g = Guard::new(cfg());
        let t0 = Instant::now();
        let phone = ip("192.168.1.50");
        g.on_success(t0, phone, "1001");
        let t1 = t0 + Duration::from_secs(1001);
        for i in 1..=5 {
            g.on_failure(t1, ip(&format!("198.51.100.{i}")), "1001");
        }
        assert!(g.account_locked(t1, "1001", phone));
    }

    #[test]
    fn unauthenticated_requests_are_bounded_per_source_and_refill_over_time() {
        let mut g = Guard::new(cfg());
        let t0 = Instant::now();
        let scanner = ip("198.51.100.1");
        for _ in 0..6 {
            assert_eq!(g.on_unauthenticated(t0, scanner), Admit::Answer);
        }
        let Admit::Block(ev) = g.on_unauthenticated(t0, scanner) else { panic!("the seventh is over the budget") };
        assert_eq!((ev.what, ev.reason, ev.duration), (Blocked::Source(scanner), "unauthenticated", Duration::from_secs(10)));
        assert_eq!(g.on_unauthenticated(t0 + Duration::from_secs(5), scanner), Admit::Drop);
        assert!(g.is_blocked(t0 + Duration::from_secs(5), scanner));
        // After the block: the bucket refilled (6 per minute → one per 10 s).
        assert_eq!(g.on_unauthenticated(t0 + Duration::from_secs(10), scanner), Admit::Answer);
        // A phone at one request per 10 s never runs dry.
        let phone = ip("192.168.1.51");
        for i in 0..100 {
            assert_eq!(g.on_unauthenticated(t0 + Duration::from_secs(10 * i), phone), Admit::Answer);
        }
        // A source that authenticated is exempt.
        let busy = ip("192.168.1.52");
        g.on_success(t0, busy, "1002");
        for _ in 0..1000 {
            assert_eq!(g.on_unauthenticated(t0, busy), Admit::Answer);
        }
    }

    #[test]
    fn unknown_numbers_are_limited_exactly_like_real_ones() {
        let mut g = Guard::new(cfg());
        let t0 = Instant::now();
        for (n, a) in [("1001", "198.51.100.1"), ("7777", "198.51.100.2")] {
            assert!(g.on_failure(t0, ip(a), n).is_empty());
            assert!(g.on_failure(t0, ip(a), n).is_empty());
            assert_eq!(g.on_failure(t0, ip(a), n).len(), 1);
        }
    }

    #[test]
    fn memory_is_bounded_by_max_tracked() {
        let mut g = Guard::new(GuardConfig { max_tracked: 100, ..cfg() });
        let t0 = Instant::now();
        for i in 0..10_000u32 {
            let a = IpAddr::from(std::net::Ipv4Addr::from(0x0a00_0000 + i));
            g.on_failure(t0 + Duration::from_millis(i as u64), a, &format!("{i}{}", "9".repeat(200)));
            let _ = g.on_unauthenticated(t0, a);
        }
        let (s, a) = g.tracked();
        assert!(s <= 100 && a <= 100, "{s} sources, {a} accounts");
    }

    #[test]
    fn the_config_section_is_strict_and_checked() {
        let c = crate::Config::from_toml("[sip_guard]\nmax_failures_per_source = 3\nenabled = false\n").unwrap();
        assert_eq!(c.sip_guard.max_failures_per_source, 3);
        assert!(!c.sip_guard.enabled);
        assert_eq!(c.sip_guard.max_failures_per_account, GuardConfig::default().max_failures_per_account);
        assert!(crate::Config::from_toml("[sip_guard]\nmax_failure_per_source = 3\n").is_err(), "unknown key");
        assert!(crate::Config::from_toml("[sip_guard]\nblock_secs = 0\n").is_err());
        assert!(crate::Config::from_toml("[sip_guard]\nforget_after_secs = 10\n").is_err());
        assert!(crate::Config::from_toml("metrics_listen = \"127.0.0.1:9102\"\n").unwrap().metrics_listen.is_some());
    }

    #[test]
    fn disabled_means_no_limit() {
        let mut g = Guard::new(GuardConfig { enabled: false, ..cfg() });
        let t0 = Instant::now();
        let a = ip("198.51.100.1");
        for _ in 0..100 {
            assert!(g.on_failure(t0, a, "1001").is_empty());
            assert_eq!(g.on_unauthenticated(t0, a), Admit::Answer);
        }
        assert!(!g.is_blocked(t0, a));
    }

    #[test]
    fn an_ipv6_attacker_gets_one_budget_per_64_not_per_address() {
        let mut g = Guard::new(cfg());
        let now = Instant::now();
        let in_64 = |n: u16| IpAddr::from(std::net::Ipv6Addr::new(0x2001, 0xdb8, 7, 1, n, n, n, n));
        let cap = cfg().max_unauthenticated_per_minute;
        for n in 0..cap {
            assert_eq!(g.on_unauthenticated(now, in_64(n as u16)), Admit::Answer, "request {n}");
        }
        // A new address of the same /64 has no budget of its own: the /64 is blocked.
        let Admit::Block(ev) = g.on_unauthenticated(now, in_64(999)) else { panic!("not blocked") };
        assert_eq!(ev.what, Blocked::Source(ip("2001:db8:7:1::")));
        assert!(g.is_blocked(now, in_64(4242)));
        assert_eq!(g.on_unauthenticated(now, in_64(4243)), Admit::Drop);
        // Another /64 is another source.
        let other = IpAddr::from(std::net::Ipv6Addr::new(0x2001, 0xdb8, 7, 2, 0, 0, 0, 1));
        assert!(!g.is_blocked(now, other));
        assert_eq!(g.on_unauthenticated(now, other), Admit::Answer);
        assert_eq!(g.tracked().0, 2);

        // Wrong passwords too: the per-source failure budget is the /64's.
        let mut g = Guard::new(cfg());
        let max = cfg().max_failures_per_source;
        let mut blocked = vec![];
        for n in 0..max {
            blocked.extend(g.on_failure(now, in_64(100 + n as u16), &format!("{}", 1000 + n)));
        }
        assert!(blocked.iter().any(|e| e.what == Blocked::Source(ip("2001:db8:7:1::"))), "{blocked:?}");
        // A phone of that /64 that authenticated is trusted as the /64, as behind an IPv4 NAT.
        let mut g = Guard::new(cfg());
        g.on_success(now, in_64(1), "1001");
        for n in 0..cap + 5 {
            assert_eq!(g.on_unauthenticated(now, in_64(2 + n as u16)), Admit::Answer, "request {n}");
        }
    }
}
