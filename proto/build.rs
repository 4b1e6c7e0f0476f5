//! Compiles `fraudgraph/v1/*.proto` with protox (pure Rust, no `protoc` needed) into
//! prost messages, tonic client/server code, pbjson serde impls (the canonical
//! protobuf JSON mapping) and a descriptor set for gRPC server reflection.

use std::{env, fs, path::PathBuf};

use prost::Message;

const PROTOS: &[&str] = &[
    "fraudgraph/v1/transaction.proto",
    "fraudgraph/v1/label.proto",
    "fraudgraph/v1/stream.proto",
    "fraudgraph/v1/scoring.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let out_dir = PathBuf::from(env::var("OUT_DIR")?);
    for proto in PROTOS {
        println!("cargo:rerun-if-changed={proto}");
    }

    let fds = protox::compile(PROTOS, ["."])?;
    let descriptor_path = out_dir.join("fraudgraph_descriptor.bin");
    fs::write(&descriptor_path, fds.encode_to_vec())?;

    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_fds(fds)?;

    let descriptors = fs::read(&descriptor_path)?;
    pbjson_build::Builder::new()
        .register_descriptors(&descriptors)?
        .preserve_proto_field_names()
        .build(&[".fraudgraph"])?;
    Ok(())
}
