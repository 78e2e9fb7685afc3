//! Passwords of this server's own accounts: the naming and length rules, and argon2id
//! hashing on a bounded number of threads.
//!
//! An argon2id hash is deliberately slow and takes 19 MiB, so a flood of logins must not
//! start one blocking thread per request: [`PasswordHashing`] runs at most `concurrency`
//! hashes at once, lets up to `queue` more wait, and refuses the rest with
//! [`AuthError::Overloaded`] (answered `unavailable` with a retry hint).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use argon2::Argon2;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString, rand_core::OsRng};
use tokio::sync::Semaphore;

use super::AuthError;

/// Longest password accepted, in characters (argon2 would take more, but nobody types it).
pub const MAX_PASSWORD_CHARS: usize = 1024;

/// Checks the username rule: 3 to 32 of `[A-Za-z0-9_.-]`.
pub fn validate_username(username: &str) -> Result<(), AuthError> {
    let ok = (3..=32).contains(&username.len())
        && username.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
    if ok { Ok(()) } else { Err(AuthError::InvalidUsername) }
}

/// Checks the password rule: 8 to [`MAX_PASSWORD_CHARS`] characters.
pub fn validate_password(password: &str) -> Result<(), AuthError> {
    if (8..=MAX_PASSWORD_CHARS).contains(&password.chars().count()) { Ok(()) } else { Err(AuthError::WeakPassword) }
}

/// Runs argon2id hashes and checks on at most `concurrency` blocking threads at once.
pub struct PasswordHashing {
    permits: Arc<Semaphore>,
    /// Hashes running or waiting; a request past `concurrency + queue` is refused.
    in_flight: Arc<AtomicUsize>,
    limit: usize,
    dummy_hash: String,
}

impl PasswordHashing {
    /// Allows `concurrency` hashes at once and `queue` more waiting for a thread.
    pub fn new(concurrency: usize, queue: usize) -> PasswordHashing {
        let concurrency = concurrency.max(1);
        let salt = SaltString::generate(&mut OsRng);
        let dummy_hash =
            Argon2::default().hash_password(b"not-a-real-password", &salt).map(|h| h.to_string()).unwrap_or_default();
        PasswordHashing {
            permits: Arc::new(Semaphore::new(concurrency)),
            in_flight: Arc::new(AtomicUsize::new(0)),
            limit: concurrency + queue,
            dummy_hash,
        }
    }

    /// How many hashes are running or waiting now.
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// Runs `work` on the blocking pool once a permit is free. The permit and the place in
    /// the count travel into the blocking closure, so a caller that goes away while the
    /// hash runs does not free its thread's permit early.
    async fn run<T: Send + 'static>(&self, work: impl FnOnce() -> T + Send + 'static) -> Result<T, AuthError> {
        if self.in_flight.fetch_add(1, Ordering::AcqRel) >= self.limit {
            self.in_flight.fetch_sub(1, Ordering::AcqRel);
            return Err(AuthError::Overloaded);
        }
        let place = InFlight(self.in_flight.clone());
        let permit = self.permits.clone().acquire_owned().await.map_err(|e| AuthError::Hashing(e.to_string()))?;
        tokio::task::spawn_blocking(move || {
            let _held = (permit, place);
            work()
        })
        .await
        .map_err(|e| AuthError::Hashing(e.to_string()))
    }

    /// Hashes a new password with argon2id.
    pub async fn hash(&self, password: String) -> Result<String, AuthError> {
        self.run(move || {
            let salt = SaltString::generate(&mut OsRng);
            Argon2::default()
                .hash_password(password.as_bytes(), &salt)
                .map(|h| h.to_string())
                .map_err(|e| AuthError::Hashing(e.to_string()))
        })
        .await?
    }

    /// Checks a password against a stored argon2 hash.
    pub async fn verify(&self, password: String, hash: String) -> Result<bool, AuthError> {
        self.run(move || {
            PasswordHash::new(&hash)
                .map(|parsed| Argon2::default().verify_password(password.as_bytes(), &parsed).is_ok())
                .unwrap_or(false)
        })
        .await
    }

    /// Verifies against a fixed hash when the user does not exist, so a login for an
    /// unknown name costs as much time as a wrong password (no username probing by timing).
    pub async fn burn(&self, password: String) -> Result<(), AuthError> {
        self.verify(password, self.dummy_hash.clone()).await.map(|_| ())
    }
}

/// A place in the in-flight count, given back when dropped.
struct InFlight(Arc<AtomicUsize>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn password_rules() {
        assert!(validate_password("short").is_err());
        assert!(validate_password("long enough").is_ok());
        assert!(validate_password(&"x".repeat(MAX_PASSWORD_CHARS + 1)).is_err());
        assert!(validate_username("al").is_err());
        assert!(validate_username("alice.b-c_d").is_ok());
        assert!(validate_username("alice bob").is_err());
    }

    #[tokio::test]
    async fn hashes_verify_and_overflow_is_refused() {
        let hashing = Arc::new(PasswordHashing::new(1, 1));
        let hash = hashing.hash("password123".into()).await.unwrap();
        assert!(hashing.verify("password123".into(), hash.clone()).await.unwrap());
        assert!(!hashing.verify("password124".into(), hash.clone()).await.unwrap());
        // One running, one waiting, the third refused at once.
        let tasks: Vec<_> = (0..3)
            .map(|_| {
                let (hashing, hash) = (hashing.clone(), hash.clone());
                tokio::spawn(async move { hashing.verify("password123".into(), hash).await })
            })
            .collect();
        let results: Vec<_> = futures::future::join_all(tasks).await.into_iter().map(Result::unwrap).collect();
        assert_eq!(results.iter().filter(|r| matches!(r, Err(AuthError::Overloaded))).count(), 1, "{results:?}");
        assert_eq!(hashing.in_flight(), 0);
    }
}
