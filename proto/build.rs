// The vendored protoc keeps the build free of system packages (DESIGN.md §6).
fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut config = tonic_prost_build::Config::new();
    config.protoc_executable(protoc_bin_vendored::protoc_bin_path()?);
    // `bytes` payloads of gradient chunks stay reference-counted slices of the receive buffer.
    config.bytes([".gradtel.v1.GradientChunk.data"]);
    // Histograms decode through a hand-written type that sizes its packed fields once
    // (src/hist.rs).
    config.extern_path(".gradtel.v1.LogHistogram", "crate::hist::LogHistogram");
    // So do the packed fields of tracked values, projections and summaries (src/packed.rs).
    config.extern_path(".gradtel.v1.TrackedValues", "crate::packed::TrackedValues");
    config.extern_path(".gradtel.v1.Projection", "crate::packed::Projection");
    config.extern_path(".gradtel.v1.Summary", "crate::packed::Summary");
    tonic_prost_build::configure().compile_with_config(
        config,
        &[
            "gradtel/v1/common.proto",
            "gradtel/v1/ingest.proto",
            "gradtel/v1/collect.proto",
        ],
        &["."],
    )?;
    // The collector's side of Collect, generated a second time with a codec that keeps each
    // report's bytes beside the decoded message (for its write-ahead log); same route, so the
    // agents' generated client talks to it unchanged.
    collect_with_codec("logged", "LoggedReport", "LoggedCodec", Side::Server)?;
    // The agent's side of Collect, with a codec that sends each report as the bytes its spool
    // already holds (src/encoded.rs); same route and wire format.
    collect_with_codec("encoded", "EncodedReport", "EncodedCodec", Side::Client)?;
    println!("cargo:rerun-if-changed=gradtel");
    Ok(())
}

enum Side {
    Server,
    Client,
}

/// One side of `gradtel.v1.Collect` generated into `$OUT_DIR/<module>/` with the codec
/// `crate::<module>::<codec>` and reports of type `crate::<module>::<input>`.
fn collect_with_codec(
    module: &str,
    input: &str,
    codec: &str,
    side: Side,
) -> Result<(), Box<dyn std::error::Error>> {
    let dir = std::path::PathBuf::from(std::env::var("OUT_DIR")?).join(module);
    std::fs::create_dir_all(&dir)?;
    tonic_build::manual::Builder::new()
        .build_client(matches!(side, Side::Client))
        .build_server(matches!(side, Side::Server))
        .out_dir(&dir)
        .compile(&[tonic_build::manual::Service::builder()
            .name("Collect")
            .package("gradtel.v1")
            .method(
                tonic_build::manual::Method::builder()
                    .name("stream")
                    .route_name("Stream")
                    .input_type(format!("crate::{module}::{input}"))
                    .output_type("crate::v1::Ack")
                    .codec_path(format!("crate::{module}::{codec}"))
                    .client_streaming()
                    .server_streaming()
                    .build(),
            )
            .build()]);
    Ok(())
}
