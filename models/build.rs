//! Links this package's tests (and any future bins, benches and examples) against the
//! libtorch that torch-sys built against, with an rpath and libtorch_cuda kept, and records
//! that libtorch's version as `FRAUDGRAPH_BUILT_LIBTORCH_VERSION`.
//! See `build/libtorch_link.rs`, which `service/build.rs` shares.

include!("build/libtorch_link.rs");

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=build/libtorch_link.rs");
    println!("cargo:rerun-if-changed=build/torch_version.rs");
    let lib = link_libtorch();
    compile_inference_mode(&lib);
}

/// Compiles `cpp/inference_mode.cpp` (c10::InferenceMode behind three C functions, see
/// `src/inference_mode.rs`) against the headers of the libtorch in `lib` (the one
/// torch-sys links).
fn compile_inference_mode(lib: &std::path::Path) {
    println!("cargo:rerun-if-changed=cpp/inference_mode.cpp");
    let include = lib.parent().unwrap_or(lib).join("include");
    cc::Build::new()
        .cpp(true)
        .pic(true)
        .include(&include)
        .flag("-std=c++17")
        // Every libtorch 2.x release for Linux uses the C++11 ABI (and the guard passes
        // no std::string across the boundary anyway).
        .define("_GLIBCXX_USE_CXX11_ABI", "1")
        .file("cpp/inference_mode.cpp")
        .compile("fraudgraph_inference_mode");
}
