//! Basic authentication as the Prometheus exporter-toolkit does it, and a
//! little stricter:
//!
//! - an unknown user is checked against a dummy hash of the same cost, so
//!   the answer's timing does not say which users exist;
//! - verified credentials are remembered (a salted SHA-256 of user, hash and
//!   password; never the password), so a scraper pays bcrypt once;
//! - one bcrypt runs at a time, on a blocking thread, and at most
//!   [`QUEUE`] checks wait for it: past that, 503. A flood of wrong
//!   passwords costs one core at most and never delays a remembered scraper.
//!   A check runs to its end on a task of its own even when its client goes
//!   away (its verdict is remembered), so closing connections frees neither
//!   the queue nor the core early.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use base64::Engine;
use ring::digest;
use tokio::sync::Semaphore;

use crate::config::ConfigError;

/// Requests waiting for the bcrypt check at most; more are answered 503.
pub const QUEUE: usize = 16;
/// Remembered outcomes at most: allowed ones (scrapers) and denied ones (a
/// flood repeating itself) are kept apart so a flood cannot push a scraper
/// out.
const ALLOWED: usize = 64;
const DENIED: usize = 1024;
/// Hash costs accepted: each step doubles a check's time, and 14 is already
/// about a second of a core.
const COSTS: std::ops::RangeInclusive<u32> = 4..=14;

/// The outcome of one request's credentials.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Allowed,
    Denied,
    /// Too many requests wait for a bcrypt check.
    Busy,
}

impl Verdict {
    pub const ALL: [Verdict; 3] = [Verdict::Allowed, Verdict::Denied, Verdict::Busy];

    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Allowed => "allowed",
            Verdict::Denied => "denied",
            Verdict::Busy => "busy",
        }
    }
}

type Key = [u8; 32];

pub struct Users {
    /// User name → bcrypt hash.
    hashes: BTreeMap<String, String>,
    /// What an unknown user is checked against: as costly as the dearest
    /// real hash, and never matching.
    dummy: String,
    salt: [u8; 16],
    allowed: Mutex<HashMap<Key, u64>>,
    denied: Mutex<HashMap<Key, u64>>,
    /// Insertion order for eviction (oldest first goes).
    clock: std::sync::atomic::AtomicU64,
    /// One permit: the bcrypt running.
    bcrypt: Arc<Semaphore>,
    /// [`QUEUE`] permits: the checks waiting or running.
    queue: Arc<Semaphore>,
}

impl Users {
    /// Check every hash (`key` names the file's key in errors).
    pub fn new(
        path: &Path,
        key: &str,
        hashes: BTreeMap<String, String>,
    ) -> Result<Users, ConfigError> {
        let mut dearest = 0;
        let mut costs = std::collections::BTreeSet::new();
        for (user, hash) in &hashes {
            let cost = hash
                .parse::<bcrypt::HashParts>()
                .map(|p| p.get_cost())
                .map_err(|_| {
                    ConfigError::new(format!(
                        "{}: {key}.{user}: must be a bcrypt hash ($2a$, $2b$ or $2y$)",
                        path.display()
                    ))
                })?;
            if !COSTS.contains(&cost) {
                return Err(ConfigError::new(format!(
                    "{}: {key}.{user}: bcrypt cost {cost} is outside {}..={} \
                     (each step doubles the time of a check; 10 to 12 is usual)",
                    path.display(),
                    COSTS.start(),
                    COSTS.end()
                )));
            }
            dearest = dearest.max(cost);
            costs.insert(cost);
        }
        if costs.len() > 1 {
            tracing::warn!(
                ?costs,
                "basic_auth_users: hashes of different costs; a user with a cheaper hash answers faster, which tells that it exists. Hash every password at one cost."
            );
        }
        let mut salt = [0; 16];
        ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut salt)
            .map_err(|_| ConfigError::new("no randomness from the system for the auth cache"))?;
        Ok(Users {
            hashes,
            // The exporter-toolkit's dummy, at our dearest cost.
            dummy: format!(
                "$2y${dearest:02}$QOauhQNbBCuQDKes6eFzPeMqBSjb7Mr5DUmpZ/VcEd00UAV/LDeSi"
            ),
            salt,
            allowed: Mutex::default(),
            denied: Mutex::default(),
            clock: Default::default(),
            bcrypt: Arc::new(Semaphore::new(1)),
            queue: Arc::new(Semaphore::new(QUEUE)),
        })
    }

    pub fn is_empty(&self) -> bool {
        self.hashes.is_empty()
    }

    /// The verdict on an `Authorization` header.
    pub async fn check(self: &Arc<Self>, header: Option<&str>) -> Verdict {
        let Some((user, password)) = header.and_then(credentials) else {
            return Verdict::Denied;
        };
        let hash = self.hashes.get(&user).unwrap_or(&self.dummy).clone();
        let known = self.hashes.contains_key(&user);
        let key = self.key(&user, &hash, &password);
        if let Some(v) = self.remembered(&key) {
            return v;
        }
        let Ok(queued) = self.queue.clone().try_acquire_owned() else {
            return Verdict::Busy;
        };
        let users = self.clone();
        let check = tokio::spawn(async move {
            let _queued = queued;
            let Ok(running) = users.bcrypt.clone().acquire_owned().await else {
                return Verdict::Busy;
            };
            // A check ahead in the queue may have had the same credentials.
            if let Some(v) = users.remembered(&key) {
                return v;
            }
            let verified = tokio::task::spawn_blocking(move || {
                let _running = running;
                bcrypt::verify(password, &hash)
            })
            .await;
            match verified {
                Ok(Ok(ok)) => {
                    let verdict = if ok && known {
                        Verdict::Allowed
                    } else {
                        Verdict::Denied
                    };
                    users.remember(key, verdict);
                    verdict
                }
                // Not remembered: the same credentials are checked again.
                _ => Verdict::Denied,
            }
        });
        check.await.unwrap_or(Verdict::Denied)
    }

    fn key(&self, user: &str, hash: &str, password: &str) -> Key {
        let mut ctx = digest::Context::new(&digest::SHA256);
        for part in [
            &self.salt[..],
            user.as_bytes(),
            hash.as_bytes(),
            password.as_bytes(),
        ] {
            ctx.update(&(part.len() as u64).to_le_bytes());
            ctx.update(part);
        }
        let mut key = [0; 32];
        key.copy_from_slice(ctx.finish().as_ref());
        key
    }

    fn remembered(&self, key: &Key) -> Option<Verdict> {
        if lock(&self.allowed).contains_key(key) {
            return Some(Verdict::Allowed);
        }
        lock(&self.denied)
            .contains_key(key)
            .then_some(Verdict::Denied)
    }

    fn remember(&self, key: Key, verdict: Verdict) {
        let (map, cap) = match verdict {
            Verdict::Allowed => (&self.allowed, ALLOWED),
            _ => (&self.denied, DENIED),
        };
        let mut map = lock(map);
        if map.len() >= cap && !map.contains_key(&key) {
            if let Some(oldest) = map.iter().min_by_key(|(_, &t)| t).map(|(k, _)| *k) {
                map.remove(&oldest);
            }
        }
        map.insert(key, self.clock.fetch_add(1, Ordering::Relaxed));
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// User and password from a `Basic` header; the scheme is case-insensitive
/// (RFC 7617).
fn credentials(header: &str) -> Option<(String, String)> {
    let (scheme, encoded) = header.trim().split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()?;
    let text = String::from_utf8(decoded).ok()?;
    let (user, password) = text.split_once(':')?;
    Some((user.to_string(), password.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(user: &str, password: &str) -> String {
        let encoded =
            base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
        format!("Basic {encoded}")
    }

    fn users(hashes: &[(&str, &str)]) -> Result<Users, ConfigError> {
        let map = hashes
            .iter()
            .map(|(u, h)| (u.to_string(), h.to_string()))
            .collect();
        Users::new(Path::new("web.yml"), "basic_auth_users", map)
    }

    #[tokio::test]
    async fn checks_and_remembers() {
        let hash = bcrypt::hash("s3cret", 4).unwrap();
        let u = Arc::new(users(&[("alice", &hash)]).unwrap());
        assert_eq!(
            u.check(Some(&header("alice", "s3cret"))).await,
            Verdict::Allowed
        );
        assert_eq!(
            u.check(Some(&header("alice", "s3cret"))).await,
            Verdict::Allowed
        );
        assert_eq!(
            u.check(Some(&header("alice", "wrong"))).await,
            Verdict::Denied
        );
        // An unknown user with the known user's password is denied.
        assert_eq!(
            u.check(Some(&header("bob", "s3cret"))).await,
            Verdict::Denied
        );
        let lower = header("alice", "s3cret").replacen("Basic", "basic", 1);
        assert_eq!(u.check(Some(&lower)).await, Verdict::Allowed);
        assert_eq!(u.check(Some("Bearer abc")).await, Verdict::Denied);
        assert_eq!(u.check(Some("Basic !!!")).await, Verdict::Denied);
        assert_eq!(u.check(None).await, Verdict::Denied);
        assert_eq!(lock(&u.allowed).len(), 1);
        assert_eq!(lock(&u.denied).len(), 2);
    }

    #[test]
    fn hashes_are_checked_at_load() {
        let err = |h: &str| users(&[("alice", h)]).err().unwrap().to_string();
        assert!(err("plain").contains("basic_auth_users.alice: must be a bcrypt hash"));
        let dear = "$2y$15$QOauhQNbBCuQDKes6eFzPeMqBSjb7Mr5DUmpZ/VcEd00UAV/LDeSi";
        assert!(err(dear).contains("cost 15"), "{}", err(dear));
        // The dummy takes the dearest cost, so unknown users are never cheaper.
        let (a, b) = (bcrypt::hash("x", 4).unwrap(), bcrypt::hash("y", 5).unwrap());
        let u = users(&[("a", &a), ("b", &b)]).unwrap();
        assert_eq!(u.dummy.parse::<bcrypt::HashParts>().unwrap().get_cost(), 5);
    }

    #[test]
    fn a_flood_does_not_push_out_a_scraper() {
        let u = users(&[]).unwrap();
        let scraper = u.key("alice", "h", "right");
        u.remember(scraper, Verdict::Allowed);
        for i in 0..DENIED * 2 {
            u.remember(u.key("alice", "h", &i.to_string()), Verdict::Denied);
        }
        assert_eq!(u.remembered(&scraper), Some(Verdict::Allowed));
        assert_eq!(lock(&u.denied).len(), DENIED);
    }
}
