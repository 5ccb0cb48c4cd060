// The vendored protoc keeps the build free of system packages (DESIGN.md §6).
fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut config = tonic_prost_build::Config::new();
    config.protoc_executable(protoc_bin_vendored::protoc_bin_path()?);
    // `bytes` payloads of gradient chunks stay reference-counted slices of the receive buffer.
    config.bytes([".gradtel.v1.GradientChunk.data"]);
    // Histograms decode through a hand-written type that sizes its packed fields once
    // (src/hist.rs).
    config.extern_path(".gradtel.v1.LogHistogram", "crate::hist::LogHistogram");
    // So do the packed fields of tracked values and projections (src/packed.rs).
    config.extern_path(".gradtel.v1.TrackedValues", "crate::packed::TrackedValues");
    config.extern_path(".gradtel.v1.Projection", "crate::packed::Projection");
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
    let logged = std::path::PathBuf::from(std::env::var("OUT_DIR")?).join("logged");
    std::fs::create_dir_all(&logged)?;
    tonic_build::manual::Builder::new()
        .build_client(false)
        .out_dir(&logged)
        .compile(&[tonic_build::manual::Service::builder()
            .name("Collect")
            .package("gradtel.v1")
            .method(
                tonic_build::manual::Method::builder()
                    .name("stream")
                    .route_name("Stream")
                    .input_type("crate::logged::LoggedReport")
                    .output_type("crate::v1::Ack")
                    .codec_path("crate::logged::LoggedCodec")
                    .client_streaming()
                    .server_streaming()
                    .build(),
            )
            .build()]);
    // The agent's side of Collect, with a codec that sends each report as the bytes its spool
    // already holds (src/encoded.rs); same route and wire format.
    let encoded = std::path::PathBuf::from(std::env::var("OUT_DIR")?).join("encoded");
    std::fs::create_dir_all(&encoded)?;
    tonic_build::manual::Builder::new()
        .build_server(false)
        .out_dir(&encoded)
        .compile(&[tonic_build::manual::Service::builder()
            .name("Collect")
            .package("gradtel.v1")
            .method(
                tonic_build::manual::Method::builder()
                    .name("stream")
                    .route_name("Stream")
                    .input_type("crate::encoded::EncodedReport")
                    .output_type("crate::v1::Ack")
                    .codec_path("crate::encoded::EncodedCodec")
                    .client_streaming()
                    .server_streaming()
                    .build(),
            )
            .build()]);
    println!("cargo:rerun-if-changed=gradtel");
    Ok(())
}
