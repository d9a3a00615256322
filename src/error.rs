//! The one error type every fleetkit operation returns.
//!
//! Variants are *semantic*: they say what went wrong in terms a caller can act on (retry, ask for a
//! new certificate, fix the input), not which library failed. Modules keep their own detailed error
//! types (for example [`ChainError`](crate::pki::ChainError)) and convert into this one, so callers
//! can match on the broad kind and still reach the precise reason.

use std::path::PathBuf;

use crate::pki::ChainError;

/// A `Result` whose error is fleetkit's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in fleetkit, by meaning.
///
/// The enum is `#[non_exhaustive]`: new kinds are added in minor releases, so always keep a
/// wildcard arm when matching.
#[non_exhaustive]
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The named thing does not exist.
    #[error("{what} not found: {id}")]
    NotFound {
        /// What kind of thing was looked for ("device", "credential slot", …).
        what: &'static str,
        /// Which one.
        id: String,
    },

    /// The thing to create exists already.
    #[error("{what} already exists: {id}")]
    AlreadyExists {
        /// What kind of thing ("device", "certificate", …).
        what: &'static str,
        /// Which one.
        id: String,
    },

    /// Input was rejected before anything was changed. `field` names the offending input.
    #[error("invalid {field}: {reason}")]
    InvalidInput {
        /// The input that was wrong: a parameter, a file, a field of a document.
        field: String,
        /// Why, in words a person can act on.
        reason: String,
    },

    /// The caller is known but not allowed to do this.
    #[error("permission denied: {0}")]
    PermissionDenied(String),

    /// The caller could not be identified (bad credential, unknown issuer, bad signature).
    #[error("unauthenticated: {0}")]
    Unauthenticated(String),

    /// A certificate, token or credential is outside its validity period.
    #[error("expired: {0}")]
    Expired(String),

    /// A certificate or credential has been revoked.
    #[error("revoked: {0}")]
    Revoked(String),

    /// A certificate chain could not be verified, for a reason other than expiry or revocation.
    #[error("untrusted certificate: {0}")]
    Untrusted(ChainError),

    /// The operation is not available with this backend, key type or configuration.
    #[error("not supported: {0}")]
    NotSupported(String),

    /// The update lost a race: the thing changed since the version the caller based it on
    /// (a twin or shadow update with a stale expected version). Read again and retry.
    #[error("conflict on {what}: expected version {expected}, current version is {current}")]
    Conflict {
        /// What was being updated ("twin of sensor-1", …).
        what: String,
        /// The version the caller expected.
        expected: u64,
        /// The version the thing has now.
        current: u64,
    },

    /// An operation did not complete in the time allowed (a method call nobody answered,
    /// a request whose response never came). It may or may not have taken effect.
    #[error("timed out: {0}")]
    Timeout(String),

    /// The connection to the hub or cloud is not available right now (disconnected, shut
    /// down). Retrying later may succeed.
    #[error("unavailable: {0}")]
    Unavailable(String),

    /// A precondition the caller set did not hold (for example an expected version).
    #[error("precondition failed: {0}")]
    Precondition(String),

    /// A cryptographic operation failed unexpectedly (not a verification failure).
    #[error("cryptographic failure: {0}")]
    Crypto(String),

    /// A file-system or network I/O error, with the path when there is one.
    #[error("I/O error{}: {source}", path.as_ref().map(|p| format!(" at {}", p.display())).unwrap_or_default())]
    Io {
        /// The file or directory involved, if any.
        path: Option<PathBuf>,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
}

impl Error {
    /// Shorthand for [`Error::InvalidInput`].
    pub fn invalid(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Error::InvalidInput {
            field: field.into(),
            reason: reason.into(),
        }
    }

    /// An error of the same kind and message (for telling several waiters about one failure;
    /// an I/O error keeps its kind and text, not its source object).
    #[cfg(feature = "device")]
    pub(crate) fn clone_kind(e: &Error) -> Error {
        match e {
            Error::NotFound { what, id } => Error::NotFound {
                what,
                id: id.clone(),
            },
            Error::AlreadyExists { what, id } => Error::AlreadyExists {
                what,
                id: id.clone(),
            },
            Error::InvalidInput { field, reason } => Error::InvalidInput {
                field: field.clone(),
                reason: reason.clone(),
            },
            Error::PermissionDenied(m) => Error::PermissionDenied(m.clone()),
            Error::Unauthenticated(m) => Error::Unauthenticated(m.clone()),
            Error::Expired(m) => Error::Expired(m.clone()),
            Error::Revoked(m) => Error::Revoked(m.clone()),
            Error::Untrusted(c) => Error::Untrusted(c.clone()),
            Error::NotSupported(m) => Error::NotSupported(m.clone()),
            Error::Conflict {
                what,
                expected,
                current,
            } => Error::Conflict {
                what: what.clone(),
                expected: *expected,
                current: *current,
            },
            Error::Timeout(m) => Error::Timeout(m.clone()),
            Error::Unavailable(m) => Error::Unavailable(m.clone()),
            Error::Precondition(m) => Error::Precondition(m.clone()),
            Error::Crypto(m) => Error::Crypto(m.clone()),
            Error::Io { path, source } => Error::Io {
                path: path.clone(),
                source: std::io::Error::new(source.kind(), source.to_string()),
            },
        }
    }

    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: Some(path.into()),
            source,
        }
    }
}

impl From<std::io::Error> for Error {
    fn from(source: std::io::Error) -> Self {
        Error::Io { path: None, source }
    }
}

impl From<ChainError> for Error {
    fn from(e: ChainError) -> Self {
        match e {
            ChainError::Expired { .. } | ChainError::NotYetValid { .. } => {
                Error::Expired(e.to_string())
            }
            ChainError::Revoked { .. } => Error::Revoked(e.to_string()),
            other => Error::Untrusted(other),
        }
    }
}
