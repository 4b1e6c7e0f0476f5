// Shared build-script code: how every fraudgraph package that links libtorch makes its
// binaries, tests, benches and examples run without LD_LIBRARY_PATH and with CUDA kept.
//
// Use it from `build.rs` of a package that depends *directly* on `torch-sys` (a dependency
// on `tch` alone is not enough: only direct dependents of a `links = "tch"` package get its
// `DEP_TCH_*` variables):
//
// ```ignore
// include!("build/libtorch_link.rs"); // path relative to the including build.rs
//
// fn main() {
//     println!("cargo:rerun-if-changed=build.rs");
//     println!("cargo:rerun-if-changed=build/libtorch_link.rs");
//     link_libtorch();
// }
// ```
//
// Why it is needed: `cargo:rustc-link-arg` only applies to the targets of the package whose
// build script prints it, so tch's and torch-sys's own link args never reach our binaries.
// Every package with binaries or tests that link libtorch has to print them itself.
//
// Plain functions and `std` only: this file is `include!`d into build scripts whose other
// items we do not know.

/// The libtorch release that the pinned `tch =0.24.0` is written against.
const FRAUDGRAPH_EXPECTED_LIBTORCH: &str = "2.11.0";

/// Links the current package's binaries, tests, benches and examples against libtorch so
/// that they run without `LD_LIBRARY_PATH`, and keeps `libtorch_cuda.so` linked.
///
/// Promises, for the libtorch lib dir that torch-sys built against
/// (`DEP_TCH_LIBTORCH_LIB`, canonicalized so the rpath does not follow later changes of
/// the `.venv` symlink):
/// - `-Wl,-rpath,<dir>`: the dynamic loader finds `libtorch*.so`/`libc10.so` there; the
///   libraries find their CUDA dependencies through their own `$ORIGIN` rpaths.
/// - when `<dir>/libtorch_cuda.so` exists, `-ltorch_cuda` between `--no-as-needed` and
///   `--pop-state`: nothing references a symbol of libtorch_cuda directly (it registers the
///   CUDA backend from static initializers), so `--as-needed` (rustc's default) would drop it
///   and CUDA would be silently unavailable at run time.
/// - `FRAUDGRAPH_BUILT_LIBTORCH_VERSION` (compile-time env for `env!`): the version from
///   `<dir>/../version.py` (pip wheel) or `<dir>/../build-version` (libtorch zip), or
///   `unknown`.
/// - fails the build when that version is not `FRAUDGRAPH_EXPECTED_LIBTORCH` (torch-sys does
///   not check this when `LIBTORCH` points at a pip wheel), unless
///   `LIBTORCH_BYPASS_VERSION_CHECK` is set, the same switch torch-sys honours.
///
/// Returns that lib dir (its `../include` holds the headers, for C++ compiled against it).
/// Panics (failing the build with the message) when `DEP_TCH_LIBTORCH_LIB` is missing.
fn link_libtorch() -> std::path::PathBuf {
    let raw = match std::env::var_os("DEP_TCH_LIBTORCH_LIB") {
        Some(dir) => std::path::PathBuf::from(dir),
        None => panic!(
            "DEP_TCH_LIBTORCH_LIB is not set: the package {} must depend directly on torch-sys \
             (links = \"tch\") to use models/build/libtorch_link.rs",
            std::env::var("CARGO_PKG_NAME").unwrap_or_default()
        ),
    };
    let dir = std::fs::canonicalize(&raw).unwrap_or(raw);
    let dir_str = dir
        .to_str()
        .unwrap_or_else(|| panic!("libtorch lib dir {} is not valid UTF-8", dir.display()));
    if dir_str.contains(',') {
        // `-Wl,` splits its argument on commas.
        panic!("libtorch lib dir {dir_str} contains a comma, which -Wl,-rpath cannot express");
    }

    println!("cargo:rustc-link-arg=-Wl,-rpath,{dir_str}");
    if dir.join("libtorch_cuda.so").exists() {
        println!("cargo:rustc-link-arg=-Wl,--push-state,--no-as-needed,-ltorch_cuda,--pop-state");
    }

    let root = dir
        .parent()
        .map(std::path::Path::to_path_buf)
        .unwrap_or_else(|| dir.clone());
    let version_py = root.join("version.py");
    let build_version = root.join("build-version");
    // Only existing files: cargo re-runs a build script on every build while a
    // rerun-if-changed path is missing.
    for file in [&version_py, &build_version] {
        if file.exists() {
            println!("cargo:rerun-if-changed={}", file.display());
        }
    }
    println!("cargo:rerun-if-env-changed=LIBTORCH_BYPASS_VERSION_CHECK");
    let version = fraudgraph_torch_version(root.as_path()).unwrap_or_else(|| "unknown".to_owned());
    println!("cargo:rustc-env=FRAUDGRAPH_BUILT_LIBTORCH_VERSION={version}");

    let release = version.split('+').next().unwrap_or_default();
    if release != FRAUDGRAPH_EXPECTED_LIBTORCH {
        let message = format!(
            "libtorch at {dir_str} is version {version}, but tch =0.24.0 needs \
             {FRAUDGRAPH_EXPECTED_LIBTORCH}; run deploy/setup.sh or point LIBTORCH at a \
             torch=={FRAUDGRAPH_EXPECTED_LIBTORCH} install"
        );
        if std::env::var_os("LIBTORCH_BYPASS_VERSION_CHECK").is_some() {
            println!("cargo:warning={message} (ignored: LIBTORCH_BYPASS_VERSION_CHECK is set)");
        } else {
            panic!("{message}");
        }
    }
    dir
}

include!("torch_version.rs");
