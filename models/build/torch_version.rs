// Which libtorch version a torch install is: shared by the build script (the version we
// link against, `libtorch_link.rs`) and `models::runtime` (the version actually loaded).
// Plain functions and `std` only, `include!`d into both.

/// The version of the libtorch install rooted at `root` (the directory holding `lib/`):
/// `__version__` of `root/version.py` (pip wheel), else the content of
/// `root/build-version` (libtorch zip).
fn fraudgraph_torch_version(root: &std::path::Path) -> Option<String> {
    std::fs::read_to_string(root.join("version.py"))
        .ok()
        .and_then(|text| fraudgraph_parse_torch_version_py(&text))
        .or_else(|| {
            std::fs::read_to_string(root.join("build-version"))
                .ok()
                .map(|text| text.trim().to_owned())
                .filter(|v| !v.is_empty())
        })
}

/// The value of `__version__ = '…'` in torch's `version.py`, if there is one.
fn fraudgraph_parse_torch_version_py(text: &str) -> Option<String> {
    text.lines().find_map(|line| {
        let rest = line.trim().strip_prefix("__version__")?.trim_start();
        let value = rest.strip_prefix('=')?.trim();
        let value = value.trim_matches(|c| c == '\'' || c == '"');
        (!value.is_empty()).then(|| value.to_owned())
    })
}
