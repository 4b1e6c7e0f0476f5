//! Links the `fraudgraph` binary and the service's tests against libtorch with an rpath and
//! libtorch_cuda kept; see `models/build/libtorch_link.rs`.

include!("../models/build/libtorch_link.rs");

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=../models/build/libtorch_link.rs");
    println!("cargo:rerun-if-changed=../models/build/torch_version.rs");
    link_libtorch();
}
