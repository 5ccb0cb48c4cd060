//! gradtel's S3 client, for the collector's upload of its Parquet lake to object storage
//! (DESIGN.md §3, decision 8).
//!
//! * [`sigv4`]: AWS Signature Version 4 (pure: no I/O), checked against AWS's published example
//!   and against botocore.
//! * [`client`]: `PutObject` over HTTP/1.1, plain or TLS (rustls), path-style URLs, so that it
//!   works with AWS S3 and with S3-compatible servers (MinIO, Ceph, moto) alike.

pub mod client;
pub mod sigv4;

pub use client::{S3Client, S3Error, S3Location};
pub use sigv4::Credentials;
