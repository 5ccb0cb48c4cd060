//! The agent's client side of `gradtel.v1.Collect`, sending reports already encoded.
//!
//! The agent writes each report's protobuf encoding to its spool before the first send; sending
//! those bytes as they are spares encoding every report a second time (a report of a few
//! hundred tensors is ≈ 1 MB and takes milliseconds to encode). Same service name, route and
//! wire format as [`crate::v1::collect_client`]: a collector cannot tell the two apart.

use bytes::{BufMut, Bytes};
use prost::Message;
use tonic::Status;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};

use crate::v1::{Ack, ShardReport};

#[allow(clippy::all, clippy::pedantic)]
mod generated {
    include!(concat!(env!("OUT_DIR"), "/encoded/gradtel.v1.Collect.rs"));
}
pub use generated::collect_client;

/// The protobuf encoding of one [`ShardReport`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EncodedReport(pub Bytes);

impl From<&ShardReport> for EncodedReport {
    fn from(r: &ShardReport) -> Self {
        EncodedReport(r.encode_to_vec().into())
    }
}

/// Encodes [`EncodedReport`]s (a copy of their bytes), decodes [`Ack`]s.
#[derive(Debug, Default, Clone, Copy)]
pub struct EncodedCodec;

#[derive(Debug, Default, Clone, Copy)]
pub struct BytesEncoder;

#[derive(Debug, Default, Clone, Copy)]
pub struct AckDecoder;

impl Codec for EncodedCodec {
    type Encode = EncodedReport;
    type Decode = Ack;
    type Encoder = BytesEncoder;
    type Decoder = AckDecoder;

    fn encoder(&mut self) -> Self::Encoder {
        BytesEncoder
    }

    fn decoder(&mut self) -> Self::Decoder {
        AckDecoder
    }
}

impl Encoder for BytesEncoder {
    type Item = EncodedReport;
    type Error = Status;

    fn encode(&mut self, item: EncodedReport, buf: &mut EncodeBuf<'_>) -> Result<(), Status> {
        buf.put_slice(&item.0);
        Ok(())
    }
}

impl Decoder for AckDecoder {
    type Item = Ack;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<Ack>, Status> {
        let ack = Ack::decode(buf).map_err(|e| Status::internal(format!("malformed Ack: {e}")))?;
        Ok(Some(ack))
    }
}
