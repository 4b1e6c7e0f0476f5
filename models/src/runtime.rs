//! What this process really runs with: libtorch and LightGBM.
//!
//! This module owns the answers to "which libtorch did we build against, which one did the
//! dynamic loader actually map, can it reach CUDA, and do libtorch and LightGBM compute
//! correctly here?". The service reports them at start-up and on its status endpoint; the
//! tests of this crate assert them, so a build that silently lost `libtorch_cuda.so` or
//! picked up another libtorch fails.
//!
//! Nothing here needs a GPU: on a CPU-only host CUDA is reported unavailable, and the
//! CPU smoke test still runs.

use std::{
    fs,
    path::{Path, PathBuf},
    time::Instant,
};

use serde::Serialize;
use tch::{Device, Kind, Tensor};

/// The libtorch version this crate was compiled and linked against, e.g. `2.11.0+cu130`:
/// read at build time from `version.py` next to the libtorch lib dir that torch-sys used
/// (see `models/build/libtorch_link.rs`), or `unknown`.
pub const BUILT_LIBTORCH_VERSION: &str = env!("FRAUDGRAPH_BUILT_LIBTORCH_VERSION");

/// The LightGBM version compiled into this binary: the one vendored by the pinned
/// `lightgbm3 =1.0.11` (`lightgbm3-sys` 1.0.11 builds LightGBM 4.7.0 from source and links it
/// statically).
///
/// LightGBM's C API has no version call, so this is a constant tied to the pin in the
/// workspace `Cargo.toml`; change both together. At run time the model text format
/// (`version=v4` in [`LightgbmCheck::model_format`]) is checked against its major version.
pub const LIGHTGBM_VERSION: &str = "4.7.0";

/// Errors of the runtime checks.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// libtorch raised an error (a C++ exception, caught by tch), e.g. a CUDA device was
    /// requested on a host without one.
    #[error("libtorch: {0}")]
    Torch(#[from] tch::TchError),
    /// The requested CUDA device does not exist here (libtorch sees fewer devices).
    #[error("{device:?} is not available: libtorch sees {cuda_device_count} CUDA device(s)")]
    DeviceUnavailable {
        /// The device that was asked for.
        device: Device,
        /// How many CUDA devices libtorch sees.
        cuda_device_count: i64,
    },
    /// The libtorch smoke test ran but computed a wrong result.
    #[error("libtorch smoke test on {device:?} computed {got}, expected {expected}")]
    TorchWrongResult {
        /// The device the computation ran on.
        device: Device,
        /// What it computed.
        got: f64,
        /// What it must compute.
        expected: f64,
    },
    /// LightGBM returned an error.
    #[error(transparent)]
    Lightgbm(#[from] lightgbm3::Error),
    /// The LightGBM smoke test ran but its result is wrong.
    #[error("LightGBM smoke test: {0}")]
    LightgbmWrongResult(String),
}

/// The libtorch this process runs with, as seen from inside the process.
///
/// `built_version` is what the binary was linked against; `loaded_*` is what the dynamic
/// loader actually mapped, which can differ (e.g. `LD_LIBRARY_PATH` on a GPU host pointing
/// at another torch). Compare them with [`TorchRuntime::loaded_matches_built`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TorchRuntime {
    /// [`BUILT_LIBTORCH_VERSION`]: the libtorch version at build time, e.g. `2.11.0+cu130`.
    pub built_version: String,
    /// The version of the libtorch actually loaded: read from `version.py` (pip wheel) or
    /// `build-version` (libtorch zip) next to the lib dir of [`Self::loaded_from`]. `None`
    /// when that file is missing or no libtorch_cpu is mapped.
    pub loaded_version: Option<String>,
    /// Path of the `libtorch_cpu.so` mapped into this process (from `/proc/self/maps`).
    /// `None` when it cannot be found (not Linux, or `/proc` unreadable).
    pub loaded_from: Option<PathBuf>,
    /// Whether libtorch sees at least one usable CUDA device.
    pub cuda_available: bool,
    /// How many CUDA devices libtorch sees (0 without CUDA).
    pub cuda_device_count: i64,
    /// Whether CUDA and cuDNN are both available to libtorch.
    pub cudnn_available: bool,
    /// Whether `libtorch_cuda.so` is mapped into this process. If it is not, libtorch has no
    /// CUDA backend and CUDA is unavailable even on a GPU host: the linker dropped it (see
    /// `models/build/libtorch_link.rs`) or the libtorch is a CPU-only build.
    pub torch_cuda_linked: bool,
}

impl TorchRuntime {
    /// Whether the loaded libtorch is exactly the one this binary was built against.
    pub fn loaded_matches_built(&self) -> bool {
        self.loaded_version.as_deref() == Some(self.built_version.as_str())
    }
}

/// Inspects the libtorch of this process.
///
/// Initializes libtorch first (asks it for CUDA devices), then finds the mapped
/// `libtorch_cpu.so` and `libtorch_cuda.so` in `/proc/self/maps` and reads the loaded
/// version next to them. Cheap enough for start-up and status pages; never fails (unknowns
/// are `None`/`false`).
pub fn torch_runtime() -> TorchRuntime {
    // Touch libtorch before reading the maps, so that everything it loads is mapped.
    let cuda_available = tch::Cuda::is_available();
    let cuda_device_count = tch::Cuda::device_count();
    let cudnn_available = tch::Cuda::cudnn_is_available();

    let maps = fs::read_to_string("/proc/self/maps").unwrap_or_default();
    let loaded_from = mapped_library(&maps, "libtorch_cpu.so");
    let loaded_version = loaded_from
        .as_deref()
        .and_then(Path::parent)
        .and_then(libtorch_version_for_lib_dir);
    let torch_cuda_linked = mapped_library(&maps, "libtorch_cuda.so").is_some();

    TorchRuntime {
        built_version: BUILT_LIBTORCH_VERSION.to_owned(),
        loaded_version,
        loaded_from,
        cuda_available,
        cuda_device_count,
        cudnn_available,
        torch_cuda_linked,
    }
}

/// A device in words, as logs, metrics and reports print it: `cpu`, `cuda:0`.
pub fn device_name(device: Device) -> String {
    match device {
        Device::Cuda(i) => format!("cuda:{i}"),
        other => format!("{other:?}").to_lowercase(),
    }
}

/// A small real computation on `device`: a 64×64 double-precision matrix product,
/// `arange(4096).reshape(64, 64) @ ones(64, 64)`, summed.
///
/// Returns the sum, which must be exactly `64 · (4096 · 4095 / 2) = 536_739_840` (all
/// values are integers well inside f64's exact range). Errors, never panics, when the device
/// is not usable (e.g. `Device::Cuda(0)` without a GPU) or when the result is wrong.
pub fn torch_smoke_test(device: Device) -> Result<f64, RuntimeError> {
    if let Device::Cuda(index) = device {
        let count = tch::Cuda::device_count();
        if i64::try_from(index).map_or(true, |index| index >= count) {
            return Err(RuntimeError::DeviceUnavailable {
                device,
                cuda_device_count: count,
            });
        }
    }
    matmul_sum(device)
}

/// The computation of [`torch_smoke_test`], without the device check.
///
/// Tensors are made on the CPU and moved with `f_to`: tch 0.24's fallible constructors
/// that take a `Scalar` (e.g. `Tensor::f_arange`) panic instead of returning the error when
/// libtorch throws (the `Scalar`'s `Drop` unwraps the pending libtorch error first).
fn matmul_sum(device: Device) -> Result<f64, RuntimeError> {
    const N: i64 = 64;
    let expected = (N * (N * N) * (N * N - 1) / 2) as f64;
    let values: Vec<f64> = (0..N * N).map(|v| v as f64).collect();
    let a = Tensor::f_from_slice(&values)?
        .f_reshape([N, N])?
        .f_to(device)?;
    let b = Tensor::f_ones([N, N], (Kind::Double, Device::Cpu))?.f_to(device)?;
    let got = a.f_matmul(&b)?.f_sum(Kind::Double)?.f_double_value(&[])?;
    if got == expected {
        Ok(got)
    } else {
        Err(RuntimeError::TorchWrongResult {
            device,
            got,
            expected,
        })
    }
}

/// What [`lightgbm_smoke_test`] found.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LightgbmCheck {
    /// The model text format line of the trained model, e.g. `version=v4` (its major
    /// matches [`LIGHTGBM_VERSION`]'s).
    pub model_format: String,
    /// Accuracy of the model on its own (separable) training rows, in `[0, 1]`.
    pub train_accuracy: f64,
    /// Mean wall time of one single-row prediction through LightGBM's fast single-row path
    /// (the fallback's per-transaction call), in microseconds.
    pub single_row_predict_us: f64,
}

/// Trains a tiny binary LightGBM model on 200 synthetic, separable rows, predicts them, and
/// times single-row prediction.
///
/// Checks that the training accuracy is at least 0.99 and that the fast single-row path
/// agrees with batch prediction; errors otherwise. Takes well under a second.
pub fn lightgbm_smoke_test() -> Result<LightgbmCheck, RuntimeError> {
    const ROWS: usize = 200;
    const FEATURES: usize = 2;
    // Deterministic rows: feature 0 decides the label (threshold 0.5), feature 1 is noise.
    let mut xs = Vec::with_capacity(ROWS * FEATURES);
    let mut labels = Vec::with_capacity(ROWS);
    for i in 0..ROWS {
        let x0 = ((i * 37) % ROWS) as f64 / ROWS as f64;
        let x1 = ((i * 91 + 13) % ROWS) as f64 / ROWS as f64;
        xs.extend_from_slice(&[x0, x1]);
        labels.push(if x0 >= 0.5 { 1.0_f32 } else { 0.0 });
    }

    let dataset = lightgbm3::Dataset::from_slice(&xs, &labels, FEATURES as i32, true)?;
    let params = serde_json::json!({
        "objective": "binary",
        "num_iterations": 20,
        "num_leaves": 4,
        "min_data_in_leaf": 5,
        "num_threads": 1,
        "seed": 7,
        "verbosity": -1,
    });
    let mut booster = lightgbm3::Booster::train(dataset, &params)?;

    let model_text = booster.save_string()?;
    let model_format = model_text
        .lines()
        .find(|line| line.starts_with("version="))
        .ok_or_else(|| {
            RuntimeError::LightgbmWrongResult("saved model has no `version=` line".to_owned())
        })?
        .trim()
        .to_owned();

    let predictions = booster.predict(&xs, FEATURES as i32, true)?;
    if predictions.len() != ROWS {
        return Err(RuntimeError::LightgbmWrongResult(format!(
            "{} predictions for {ROWS} rows",
            predictions.len()
        )));
    }
    let correct = predictions
        .iter()
        .zip(&labels)
        .filter(|&(&p, &y)| (p >= 0.5) == (y >= 0.5))
        .count();
    let train_accuracy = correct as f64 / ROWS as f64;
    if train_accuracy < 0.99 {
        return Err(RuntimeError::LightgbmWrongResult(format!(
            "training accuracy {train_accuracy} on separable data"
        )));
    }

    booster.single_row_fast_init::<f64>(Some(&serde_json::json!({ "num_threads": 1 })))?;
    let row = &xs[..FEATURES];
    let fast = booster.predict_single_row_fast(row)?;
    if fast.len() != 1 || (fast[0] - predictions[0]).abs() > 1e-12 {
        return Err(RuntimeError::LightgbmWrongResult(format!(
            "single-row prediction {fast:?} differs from batch prediction {}",
            predictions[0]
        )));
    }
    const WARMUP: usize = 100;
    const TIMED: usize = 2_000;
    let mut sink = 0.0;
    for i in 0..WARMUP {
        sink += booster.predict_single_row_fast(&xs[(i % ROWS) * FEATURES..][..FEATURES])?[0];
    }
    let start = Instant::now();
    for i in 0..TIMED {
        sink += booster.predict_single_row_fast(&xs[(i % ROWS) * FEATURES..][..FEATURES])?[0];
    }
    let elapsed = start.elapsed();
    std::hint::black_box(sink);
    let single_row_predict_us = elapsed.as_secs_f64() * 1e6 / TIMED as f64;

    Ok(LightgbmCheck {
        model_format,
        train_accuracy,
        single_row_predict_us,
    })
}

/// The path of the first file mapping in `maps` (the text of `/proc/<pid>/maps`) whose file
/// name is `name` or `name.<suffix>` (a versioned soname).
fn mapped_library(maps: &str, name: &str) -> Option<PathBuf> {
    maps.lines().find_map(|line| {
        // `address perms offset dev inode   pathname`; only the pathname contains '/'.
        let path = line[line.find('/')?..].trim_end();
        let path = path.strip_suffix(" (deleted)").unwrap_or(path);
        let file_name = Path::new(path).file_name()?.to_str()?;
        let matches = file_name == name
            || file_name
                .strip_prefix(name)
                .is_some_and(|rest| rest.starts_with('.'));
        matches.then(|| PathBuf::from(path))
    })
}

/// The version of the libtorch whose lib dir is `lib_dir`: `__version__` of
/// `<lib_dir>/../version.py` (pip wheel), else the content of `<lib_dir>/../build-version`
/// (libtorch zip).
fn libtorch_version_for_lib_dir(lib_dir: &Path) -> Option<String> {
    fraudgraph_torch_version(lib_dir.parent()?)
}

include!("../build/torch_version.rs");

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn built_against_libtorch_2_11_0() {
        assert!(
            BUILT_LIBTORCH_VERSION.starts_with("2.11.0"),
            "built against libtorch {BUILT_LIBTORCH_VERSION}"
        );
    }

    #[test]
    fn loaded_libtorch_is_the_built_one_and_keeps_cuda() {
        let runtime = torch_runtime();
        eprintln!("{runtime:#?}");
        assert!(runtime.built_version.starts_with("2.11.0"), "{runtime:?}");
        let loaded_from = runtime
            .loaded_from
            .as_deref()
            .expect("libtorch_cpu.so is not in /proc/self/maps");
        assert!(loaded_from.is_absolute(), "{}", loaded_from.display());
        assert_eq!(
            runtime.loaded_version.as_deref(),
            Some(runtime.built_version.as_str()),
            "loaded {} but built against {}",
            loaded_from.display(),
            runtime.built_version
        );
        assert!(runtime.loaded_matches_built());
        // The wheel this repo builds against (torch 2.11.0+cu130) ships libtorch_cuda.so;
        // when the build has it, it must stay linked, or CUDA silently disappears on GPUs.
        let lib_dir = loaded_from.parent().expect("lib dir");
        if lib_dir.join("libtorch_cuda.so").exists() {
            assert!(
                runtime.torch_cuda_linked,
                "libtorch_cuda.so was dropped: {runtime:?}"
            );
        }
        if runtime.cuda_available {
            assert!(runtime.torch_cuda_linked);
            assert!(runtime.cuda_device_count >= 1);
        } else {
            assert_eq!(runtime.cuda_device_count, 0);
            assert!(!runtime.cudnn_available);
        }
    }

    #[test]
    fn the_wheel_in_use_ships_libtorch_cuda() {
        // This repo pins the CUDA wheel (torch==2.11.0 from PyPI is +cu130).
        let runtime = torch_runtime();
        assert!(
            runtime.built_version.contains("+cu"),
            "expected a CUDA build of libtorch, built against {}",
            runtime.built_version
        );
        assert!(runtime.torch_cuda_linked, "{runtime:?}");
    }

    #[test]
    fn torch_smoke_test_on_cpu() {
        assert_eq!(torch_smoke_test(Device::Cpu).unwrap(), 536_739_840.0);
    }

    #[test]
    fn torch_smoke_test_on_cuda_when_there_is_one() {
        let result = torch_smoke_test(Device::Cuda(0));
        if tch::Cuda::is_available() {
            assert_eq!(result.unwrap(), 536_739_840.0);
        } else {
            assert!(
                matches!(result, Err(RuntimeError::DeviceUnavailable { .. })),
                "{result:?}"
            );
        }
        let missing = torch_smoke_test(Device::Cuda(1_000));
        assert!(
            matches!(missing, Err(RuntimeError::DeviceUnavailable { .. })),
            "{missing:?}"
        );
    }

    #[test]
    fn a_libtorch_exception_is_an_error_not_a_crash() {
        if tch::Cuda::is_available() {
            return;
        }
        // Past the device check, libtorch itself throws ("no NVIDIA driver").
        let result = matmul_sum(Device::Cuda(0));
        assert!(matches!(result, Err(RuntimeError::Torch(_))), "{result:?}");
    }

    #[test]
    fn lightgbm_smoke_test_trains_predicts_and_matches_the_pinned_version() {
        let check = lightgbm_smoke_test().unwrap();
        eprintln!("{check:?}");
        let format_major = check
            .model_format
            .strip_prefix("version=v")
            .unwrap_or_else(|| panic!("unexpected format line {:?}", check.model_format));
        let pinned_major = LIGHTGBM_VERSION.split('.').next().unwrap();
        assert_eq!(format_major, pinned_major);
        assert!(check.train_accuracy >= 0.99, "{check:?}");
        assert!(check.single_row_predict_us > 0.0);
        // Measured about 6 µs; a generous bound that still catches e.g. a per-call re-init.
        assert!(check.single_row_predict_us < 1_000.0, "{check:?}");
    }

    #[test]
    fn mapped_library_parses_proc_maps_lines() {
        let maps = "\
7f0000000000-7f0000001000 r--p 00000000 08:01 123  /opt/x/libtorch_cpu_extra.so
7f1000000000-7f1000001000 r--p 00000000 08:01 456                      /opt/my torch/lib/libtorch_cpu.so
7f2000000000-7f2000001000 r-xp 00000000 08:01 789  /usr/lib/libtorch_cuda.so.2.11 (deleted)
7f3000000000-7f3000001000 rw-p 00000000 00:00 0    [heap]
7f4000000000-7f4000001000 rw-p 00000000 00:00 0
";
        assert_eq!(
            mapped_library(maps, "libtorch_cpu.so"),
            Some(PathBuf::from("/opt/my torch/lib/libtorch_cpu.so"))
        );
        assert_eq!(
            mapped_library(maps, "libtorch_cuda.so"),
            Some(PathBuf::from("/usr/lib/libtorch_cuda.so.2.11"))
        );
        assert_eq!(mapped_library(maps, "libc10.so"), None);
    }

    #[test]
    fn parse_version_py_reads_the_wheel_format() {
        let text = "from typing import Optional\n\n__all__ = ['__version__']\n\
                    __version__ = '2.11.0+cu130'\ndebug = False\n";
        assert_eq!(
            fraudgraph_parse_torch_version_py(text).as_deref(),
            Some("2.11.0+cu130")
        );
        assert_eq!(
            fraudgraph_parse_torch_version_py("__version__=\"2.11.0\""),
            Some("2.11.0".into())
        );
        assert_eq!(fraudgraph_parse_torch_version_py("version = '1'"), None);
    }
}
