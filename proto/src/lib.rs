//! The gradtel.v1 wire protocol, generated from `proto/gradtel/v1/*.proto`.
//!
//! * [`v1::ingest_server`] / [`v1::ingest_client`]: training process → local agent.
//! * [`v1::collect_server`] / [`v1::collect_client`]: agent → collector;
//!   [`logged::collect_server`]: the same service, keeping each report's bytes (the collector's);
//!   [`encoded::collect_client`]: the same service, sending reports already encoded (the agent's).
//!
//! The `.proto` files are the documentation of every field; this crate adds only the minor
//! revision constant and helpers that belong to the wire format itself.

#[cfg(any(test, feature = "testing"))]
pub mod counting;
pub mod encoded;
pub mod hist;
pub mod logged;
#[cfg(any(test, feature = "testing"))]
pub mod mutate;
pub mod packed;
pub mod recycle;
pub mod tls;

#[allow(clippy::all, clippy::pedantic)]
pub mod v1 {
    tonic::include_proto!("gradtel.v1");
    pub use crate::hist::LogHistogram;
    pub use crate::packed::{Projection, Summary, TrackedValues, projection};
}

/// Minor revision of gradtel.v1 this build speaks. Bump it when a field is added.
pub const PROTOCOL_MINOR: u32 = 5;

impl v1::Dtype {
    /// Bytes per element on the wire; `None` for `DTYPE_UNSPECIFIED`.
    pub fn element_size(self) -> Option<usize> {
        match self {
            v1::Dtype::F32 => Some(4),
            v1::Dtype::F16 | v1::Dtype::Bf16 => Some(2),
            v1::Dtype::Unspecified => None,
        }
    }
}

/// Longest accepted run id.
pub const MAX_RUN_ID_LEN: usize = 128;

/// Why a run id was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RunIdError {
    Empty,
    TooLong(usize),
    BadChar(char),
    DotsOnly,
}

impl std::fmt::Display for RunIdError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RunIdError::Empty => write!(f, "run id is empty"),
            RunIdError::TooLong(n) => {
                write!(f, "run id has {n} characters, more than {MAX_RUN_ID_LEN}")
            }
            RunIdError::BadChar(c) => write!(
                f,
                "run id contains {c:?}; only letters, digits, '.', '_' and '-' are allowed"
            ),
            RunIdError::DotsOnly => write!(f, "run id may not be '.' or '..'"),
        }
    }
}

impl std::error::Error for RunIdError {}

/// Validate a run id: 1..=128 characters from `[A-Za-z0-9._-]`, not `.` or `..`.
///
/// Run ids become a directory name (`run=<id>`) under the collector's output root, so this is
/// what keeps any run from escaping it: no separator, no parent reference, no NUL.
pub fn validate_run_id(id: &str) -> Result<(), RunIdError> {
    if id.is_empty() {
        return Err(RunIdError::Empty);
    }
    if id.len() > MAX_RUN_ID_LEN {
        return Err(RunIdError::TooLong(id.chars().count()));
    }
    if let Some(c) = id
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        return Err(RunIdError::BadChar(c));
    }
    if id == "." || id == ".." {
        return Err(RunIdError::DotsOnly);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_ids_cannot_escape_the_root() {
        for bad in ["", ".", "..", "../x", "a/b", "a\\b", "x\0y", "run id", "é"] {
            assert!(validate_run_id(bad).is_err(), "{bad:?} accepted");
        }
        assert!(validate_run_id(&"a".repeat(129)).is_err());
        for good in ["run-1", "exp_2026.11.26", "A", "..a", &"a".repeat(128)] {
            assert!(validate_run_id(good).is_ok(), "{good:?} refused");
        }
    }
}
