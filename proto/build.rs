// The vendored protoc keeps the build free of system packages (DESIGN.md §6).
fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut config = tonic_prost_build::Config::new();
    config.protoc_executable(protoc_bin_vendored::protoc_bin_path()?);
    // `bytes` payloads of gradient chunks stay reference-counted slices of the receive buffer.
    config.bytes([".gradtel.v1.GradientChunk.data"]);
    tonic_prost_build::configure().compile_with_config(
        config,
        &[
            "gradtel/v1/common.proto",
            "gradtel/v1/ingest.proto",
            "gradtel/v1/collect.proto",
        ],
        &["."],
    )?;
    println!("cargo:rerun-if-changed=gradtel");
    Ok(())
}
