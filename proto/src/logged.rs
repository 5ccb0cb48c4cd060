//! The collector's server side of `gradtel.v1.Collect`, whose codec keeps each report's bytes.
//!
//! The collector logs every accepted report before acknowledging it; with the bytes it was
//! decoded from at hand it logs them as they came instead of encoding the message again (which
//! cost as much as decoding it). Same service name and route as [`crate::v1::collect_server`],
//! so agents built with the ordinary generated client connect unchanged.

use bytes::{Buf, Bytes};
use prost::Message;
use tonic::Status;
use tonic::codec::{BufferSettings, Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};

use crate::v1::{Ack, ShardReport};

#[allow(clippy::all, clippy::pedantic)]
mod generated {
    include!(concat!(env!("OUT_DIR"), "/logged/gradtel.v1.Collect.rs"));
}
pub use generated::collect_server;

/// A report and the encoded message it was decoded from.
#[derive(Debug, Clone)]
pub struct LoggedReport {
    pub report: ShardReport,
    pub raw: Bytes,
}

/// Decodes [`LoggedReport`]s, encodes [`Ack`]s.
#[derive(Debug, Default, Clone, Copy)]
pub struct LoggedCodec;

#[derive(Debug, Default, Clone, Copy)]
pub struct AckEncoder;

#[derive(Debug, Default, Clone, Copy)]
pub struct LoggedDecoder;

impl Codec for LoggedCodec {
    type Encode = Ack;
    type Decode = LoggedReport;
    type Encoder = AckEncoder;
    type Decoder = LoggedDecoder;

    fn encoder(&mut self) -> Self::Encoder {
        AckEncoder
    }

    fn decoder(&mut self) -> Self::Decoder {
        LoggedDecoder
    }
}

impl Encoder for AckEncoder {
    type Item = Ack;
    type Error = Status;

    fn encode(&mut self, item: Ack, buf: &mut EncodeBuf<'_>) -> Result<(), Status> {
        item.encode(buf)
            .map_err(|e| Status::internal(format!("cannot encode an ack: {e}")))
    }
}

impl Decoder for LoggedDecoder {
    type Item = LoggedReport;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<LoggedReport>, Status> {
        let raw = buf.copy_to_bytes(buf.remaining());
        let report = ShardReport::decode(raw.clone())
            .map_err(|e| Status::invalid_argument(format!("malformed ShardReport: {e}")))?;
        Ok(Some(LoggedReport { report, raw }))
    }

    /// Each report keeps its bytes, a slice of the stream's receive buffer, until it is
    /// logged; so tonic cannot reuse that buffer and allocates another when the next report
    /// does not fit. At tonic's default 8 KiB that was an allocation (and copy of the partial
    /// report) for every second report; 64 KiB makes it one in about sixteen, for 64 KiB held
    /// per stream.
    fn buffer_settings(&self) -> BufferSettings {
        BufferSettings::new(RECEIVE_BUFFER_BYTES, YIELD_THRESHOLD_BYTES)
    }
}

/// Receive buffer of one report stream.
const RECEIVE_BUFFER_BYTES: usize = 64 << 10;
/// tonic's default: decoded bytes after which a stream yields to other tasks.
const YIELD_THRESHOLD_BYTES: usize = 32 << 10;
