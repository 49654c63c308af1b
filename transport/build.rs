//! Generates the gRPC messages and service of `proto/kaizen.proto` with a vendored `protoc`
//! (from crates.io), so the build needs no system protobuf compiler.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    // SAFETY: build scripts are single-threaded; prost-build reads PROTOC from the environment.
    unsafe { std::env::set_var("PROTOC", protoc) };
    println!("cargo:rerun-if-changed=proto/kaizen.proto");
    // `bytes` fields become `bytes::Bytes`, so weight chunks are zero-copy slices of one buffer.
    tonic_prost_build::configure()
        .bytes(".")
        .compile_protos(&["proto/kaizen.proto"], &["proto"])?;
    Ok(())
}
