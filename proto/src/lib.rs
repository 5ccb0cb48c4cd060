//! The gradtel.v1 wire protocol, generated from `proto/gradtel/v1/*.proto`.
//!
//! * [`v1::ingest_server`] / [`v1::ingest_client`]: training process → local agent.
//! * [`v1::collect_server`] / [`v1::collect_client`]: agent → collector.
//!
//! The `.proto` files are the documentation of every field; this crate adds only the minor
//! revision constant and helpers that belong to the wire format itself.

#[allow(clippy::all, clippy::pedantic)]
pub mod v1 {
    tonic::include_proto!("gradtel.v1");
}

/// Minor revision of gradtel.v1 this build speaks. Bump it when a field is added.
pub const PROTOCOL_MINOR: u32 = 0;

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
