//! fraudgraph's models.
//!
//! This crate owns Hybrid-FraudNet (libtorch through tch, plus a native CPU forward pass for
//! serving), the LightGBM fallback, training, evaluation and the model artifact format. The
//! features themselves are defined once, in `fraudgraph_sampler::features`, and used by
//! training and serving alike.
//!
//! Modules:
//!
//! - [`runtime`]: which libtorch and LightGBM this process really runs with (the libtorch
//!   it was built against, the one the loader actually mapped, CUDA/cuDNN availability,
//!   whether `libtorch_cuda.so` stayed linked) and small real smoke tests of both.
//! - [`tensors`]: the sampler's collated batch as libtorch tensors on one device, shapes
//!   and index ranges checked.
//! - [`inference_mode`]: libtorch's inference mode (a C++ guard tch does not expose), which
//!   [`net::HybridFraudNet::predict`] runs in.
//! - [`net`]: Hybrid-FraudNet, relation-aware heterogeneous graph attention fused with
//!   temporal attention over the account's history; its configuration and precision switch;
//!   [`net::NativeNet`], its forward pass on the CPU without libtorch (for serving).
//! - [`gbdt`]: the LightGBM fallback on tabular features (the transaction and its one-hop
//!   context), saved as a standard LightGBM text model.
//! - [`metrics`]: PR-AUC, ROC-AUC, F1, recall at a false-positive rate; [`margin`]: how
//!   sure a lead in PR-AUC is (a bootstrap interval); [`plots`]: PNGs.
//! - [`dataset`]: labelled streams replayed leak-free through the graph and sampler, split
//!   by time.
//! - [`train`]: one replay, then the GNN (early stopped on validation PR-AUC) and the GBDT,
//!   and their decision thresholds.
//! - [`artifact`]: the model artifact directory (manifest, safetensors weights, LightGBM
//!   text), saved atomically and refused on load when it does not fit this build; scoring
//!   helpers for both models.
//! - [`eval`]: both models on the held-out test period, overall and per typology, with a
//!   Markdown report and plots.
//!
//! Building: `.cargo/config.toml` points `LIBTORCH` and `CMAKE` into the repo's `.venv`
//! (made by `deploy/setup.sh`), and `build.rs` gives this crate's tests an rpath to that
//! libtorch, so nothing needs `LD_LIBRARY_PATH`.

pub mod dataset;
pub mod inference_mode;
pub mod net;
pub mod runtime;
pub mod tensors;
pub mod train;

pub mod gbdt;
pub mod margin;
pub mod metrics;
pub mod plots;

pub mod artifact;
pub mod eval;
