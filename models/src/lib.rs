//! fraudgraph's models.
//!
//! This crate will own Hybrid-FraudNet (libtorch through tch), the LightGBM fallback, the
//! single definition of features, training, evaluation and the model artifact format.
//!
//! For now it owns these modules:
//!
//! - [`runtime`]: which libtorch and LightGBM this process really runs with (the libtorch
//!   it was built against, the one the loader actually mapped, CUDA/cuDNN availability,
//!   whether `libtorch_cuda.so` stayed linked) and small real smoke tests of both.
//! - [`tensors`]: the sampler's collated batch as libtorch tensors on one device, shapes
//!   and index ranges checked.
//! - [`net`]: Hybrid-FraudNet, relation-aware heterogeneous graph attention fused with
//!   temporal attention over the account's history; its configuration and precision switch.
//!
//! Building: `.cargo/config.toml` points `LIBTORCH` and `CMAKE` into the repo's `.venv`
//! (made by `deploy/setup.sh`), and `build.rs` gives this crate's tests an rpath to that
//! libtorch, so nothing needs `LD_LIBRARY_PATH`.

pub mod net;
pub mod runtime;
pub mod tensors;

pub mod gbdt;
pub mod metrics;
pub mod plots;
