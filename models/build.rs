//! Links this package's tests (and any future bins, benches and examples) against the
//! libtorch that torch-sys built against, with an rpath and libtorch_cuda kept, and records
//! that libtorch's version as `FRAUDGRAPH_BUILT_LIBTORCH_VERSION`.
//! See `build/libtorch_link.rs`, which `service/build.rs` shares.

include!("build/libtorch_link.rs");

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=build/libtorch_link.rs");
    println!("cargo:rerun-if-changed=build/torch_version.rs");
    link_libtorch();
}
