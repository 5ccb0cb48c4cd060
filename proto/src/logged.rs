//! The collector's server side of `gradtel.v1.Collect`, whose codec keeps each report's bytes.
//!
//! The collector logs every accepted report before acknowledging it; with the bytes it was
//! decoded from at hand it logs them as they came instead of encoding the message again (which
//! cost as much as decoding it). Same service name and route as [`crate::v1::collect_server`],
//! so agents built with the ordinary generated client connect unchanged.

use bytes::{Buf, Bytes};
use prost::Message;
use tonic::Status;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};

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
}
