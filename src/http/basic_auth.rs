//! `basic_auth_users`: HTTP basic authentication against bcrypt hashes.
//!
//! bcrypt is slow on purpose (tens of milliseconds at cost 10), and
//! Prometheus sends the same credentials with every scrape, so each verdict
//! is cached, as in the exporter-toolkit: the key is a SHA-256 of the user,
//! the hash and the password (the password itself is never kept), and a
//! cache hit costs one SHA-256. A miss runs bcrypt on the blocking pool, one
//! at a time (a flood of wrong passwords costs one core, never the runtime
//! that cycles or polls, and never the scrapes whose verdict is cached).
//!
//! An unknown user costs a bcrypt check too, against a stand-in hash of the
//! same cost as the dearest configured one, and its verdict is cached the
//! same way: a wrong user name and a wrong password take the same path and
//! the same time, so answers tell nothing about which user names exist.
//! The hash comparison inside bcrypt is constant-time.

use std::collections::{BTreeMap, HashMap};
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use base64::Engine;
use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{self, HeaderValue};
use hyper::{HeaderMap, Response, StatusCode};
use sha2::{Digest, Sha256};

use super::key_error::KeyError;

/// How many verdicts are kept; a tenth of them is dropped when full.
const CACHE_ENTRIES: usize = 100;

/// The configured users and their bcrypt hashes, checked.
pub(crate) struct Users {
    hashes: BTreeMap<String, String>,
    /// A hash of a random password, as costly as the dearest user's, that
    /// an unknown user's password is checked against.
    stand_in: String,
}

impl std::fmt::Debug for Users {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the hashes.
        write!(f, "Users({})", self.hashes.len())
    }
}

impl Users {
    /// Checks every hash; makes the stand-in (one bcrypt hash at the
    /// highest configured cost).
    pub(crate) fn new(hashes: BTreeMap<String, String>) -> Result<Users, KeyError> {
        // bcrypt's least cost; raised to the dearest user's.
        let mut cost = 4;
        for (user, hash) in &hashes {
            let key = format!("basic_auth_users.{user}");
            if user.is_empty() || user.contains(':') {
                return Err(KeyError::invalid(
                    "basic_auth_users",
                    "a user name must be non-empty and must not contain ':'",
                ));
            }
            // The error of bcrypt's parser quotes the hash: never shown.
            let parts = bcrypt::HashParts::from_str(hash).map_err(|_| {
                KeyError::invalid(
                    &key,
                    "not a bcrypt hash (expected $2y$…, 60 characters; make one with `htpasswd -nBC 10 \"\" | tr -d ':\\n'`)",
                )
            })?;
            cost = cost.max(parts.get_cost());
        }
        let random = format!("{:016x}{:016x}", fastrand::u64(..), fastrand::u64(..));
        let stand_in = bcrypt::hash(random, cost).map_err(|err| {
            KeyError::invalid("basic_auth_users", format!("cannot make a bcrypt hash: {err}"))
        })?;
        Ok(Users { hashes, stand_in })
    }

    /// How many users there are.
    pub(crate) fn len(&self) -> usize {
        self.hashes.len()
    }
}

/// Cached verdicts and the bcrypt gate, kept across reloads (a changed hash
/// makes a new key, so a stale verdict is never used).
#[derive(Debug)]
pub(crate) struct AuthCache {
    verdicts: Mutex<HashMap<[u8; 32], bool>>,
    /// One bcrypt at a time.
    gate: tokio::sync::Semaphore,
    /// bcrypt checks against the stand-in hash (unknown users).
    stand_in_checks: AtomicU64,
    /// bcrypt checks in all.
    checks: AtomicU64,
}

impl Default for AuthCache {
    fn default() -> AuthCache {
        AuthCache {
            verdicts: Mutex::new(HashMap::new()),
            gate: tokio::sync::Semaphore::new(1),
            stand_in_checks: AtomicU64::new(0),
            checks: AtomicU64::new(0),
        }
    }
}

impl AuthCache {
    /// Whether `headers` carry the credentials of one of `users`.
    pub(crate) async fn allows(&self, users: &Users, headers: &HeaderMap) -> bool {
        let Some((user, password)) = credentials(headers) else { return false };
        let (hash, known) = match users.hashes.get(&user) {
            Some(hash) => (hash.as_str(), true),
            None => (users.stand_in.as_str(), false),
        };
        let key = cache_key(&user, hash, &password);
        let verdict = match self.cached(&key) {
            Some(verdict) => verdict,
            None => {
                // Closed never: the semaphore lives as long as the cache.
                let _turn = self.gate.acquire().await.expect("the bcrypt gate is never closed");
                // Another request with the same credentials may have
                // checked them while this one waited.
                match self.cached(&key) {
                    Some(verdict) => verdict,
                    None => {
                        let verdict = self.check(password, hash.to_string(), known).await;
                        self.remember(key, verdict);
                        verdict
                    }
                }
            }
        };
        known && verdict
    }

    /// `(stand-in checks, all checks)` so far.
    pub(crate) fn checks(&self) -> (u64, u64) {
        (self.stand_in_checks.load(Ordering::Relaxed), self.checks.load(Ordering::Relaxed))
    }

    /// One bcrypt check, on the blocking pool.
    async fn check(&self, password: Vec<u8>, hash: String, known: bool) -> bool {
        self.checks.fetch_add(1, Ordering::Relaxed);
        if !known {
            self.stand_in_checks.fetch_add(1, Ordering::Relaxed);
        }
        tokio::task::spawn_blocking(move || bcrypt::verify(password, &hash).unwrap_or(false))
            .await
            .unwrap_or(false)
    }

    fn cached(&self, key: &[u8; 32]) -> Option<bool> {
        self.verdicts.lock().unwrap_or_else(std::sync::PoisonError::into_inner).get(key).copied()
    }

    fn remember(&self, key: [u8; 32], verdict: bool) {
        let mut verdicts = self.verdicts.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if verdicts.len() >= CACHE_ENTRIES {
            // A HashMap's order is random per map: this drops arbitrary
            // entries, not the oldest or the newest.
            let drop: Vec<[u8; 32]> = verdicts.keys().take(CACHE_ENTRIES / 10).copied().collect();
            for old in drop {
                verdicts.remove(&old);
            }
        }
        verdicts.insert(key, verdict);
    }
}

/// The user and password of an `Authorization: Basic` header.
fn credentials(headers: &HeaderMap) -> Option<(String, Vec<u8>)> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, encoded) = value.trim().split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD.decode(encoded.trim()).ok()?;
    let colon = decoded.iter().position(|&b| b == b':')?;
    let user = String::from_utf8(decoded[..colon].to_vec()).ok()?;
    Some((user, decoded[colon + 1..].to_vec()))
}

/// SHA-256 of the user, the hash and the password, each length-prefixed so
/// that no two triples make the same input.
fn cache_key(user: &str, hash: &str, password: &[u8]) -> [u8; 32] {
    let mut digest = Sha256::new();
    for part in [user.as_bytes(), hash.as_bytes(), password] {
        digest.update((part.len() as u64).to_le_bytes());
        digest.update(part);
    }
    digest.finalize().into()
}

/// 401 with `WWW-Authenticate: Basic`.
pub(crate) fn unauthorized() -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from_static(b"Unauthorized\n")));
    *resp.status_mut() = StatusCode::UNAUTHORIZED;
    let headers = resp.headers_mut();
    headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Basic"));
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(user: &str, password: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        let encoded =
            base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
        headers.insert(header::AUTHORIZATION, format!("Basic {encoded}").parse().unwrap());
        headers
    }

    fn users() -> Users {
        let mut hashes = BTreeMap::new();
        hashes.insert("prometheus".to_string(), bcrypt::hash("s3cret", 4).unwrap());
        hashes.insert("grafana".to_string(), bcrypt::hash("other", 5).unwrap());
        Users::new(hashes).unwrap()
    }

    #[test]
    fn the_stand_in_costs_as_much_as_the_dearest_user() {
        let users = users();
        let parts = bcrypt::HashParts::from_str(&users.stand_in).unwrap();
        assert_eq!(parts.get_cost(), 5);
        assert_eq!(format!("{users:?}"), "Users(2)");
    }

    #[tokio::test]
    async fn right_wrong_and_unknown_credentials_and_the_checks_they_cost() {
        let users = users();
        let cache = AuthCache::default();
        assert!(cache.allows(&users, &header("prometheus", "s3cret")).await);
        assert_eq!(cache.checks(), (0, 1));
        // Cached: no second bcrypt.
        assert!(cache.allows(&users, &header("prometheus", "s3cret")).await);
        assert_eq!(cache.checks(), (0, 1));
        assert!(!cache.allows(&users, &header("prometheus", "wrong")).await);
        assert_eq!(cache.checks(), (0, 2));
        // An unknown user is checked against the stand-in, once, as a wrong
        // password is: the same path, the same cost.
        assert!(!cache.allows(&users, &header("nobody", "s3cret")).await);
        assert_eq!(cache.checks(), (1, 3));
        assert!(!cache.allows(&users, &header("nobody", "s3cret")).await);
        assert_eq!(cache.checks(), (1, 3));
        // No credentials, or not basic ones: refused without bcrypt.
        assert!(!cache.allows(&users, &HeaderMap::new()).await);
        let mut bearer = HeaderMap::new();
        bearer.insert(header::AUTHORIZATION, "Bearer abc".parse().unwrap());
        assert!(!cache.allows(&users, &bearer).await);
        assert_eq!(cache.checks(), (1, 3));
    }

    #[test]
    fn the_cache_stays_bounded() {
        let cache = AuthCache::default();
        for n in 0..(3 * CACHE_ENTRIES) {
            cache.remember(cache_key("u", "h", n.to_string().as_bytes()), false);
        }
        assert!(cache.verdicts.lock().unwrap().len() <= CACHE_ENTRIES);
        assert_ne!(cache_key("ab", "c", b""), cache_key("a", "bc", b""));
    }

    #[test]
    fn a_bad_hash_is_named_by_its_user_never_quoted() {
        let mut hashes = BTreeMap::new();
        hashes.insert("alice".to_string(), "$2y$10$notreallyahash".to_string());
        let KeyError::Invalid { key, message } = Users::new(hashes).unwrap_err() else {
            panic!("not an invalid value")
        };
        assert_eq!(key, "basic_auth_users.alice");
        assert!(message.starts_with("not a bcrypt hash"), "{message}");
        assert!(!message.contains("notreally"), "{message}");
    }
}
