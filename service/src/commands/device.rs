//! `--device` and `--precision`: where and in what precision libtorch runs the GNN,
//! shared by the commands that run it.

use anyhow::bail;
use clap::ValueEnum;
use fraudgraph_models::net::Precision;
use tch::Device;

/// Where the GNN runs.
#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum DeviceChoice {
    /// The first CUDA device when there is one, else the CPU.
    Auto,
    /// The CPU.
    Cpu,
    /// The first CUDA device; an error when there is none.
    Cuda,
}

impl DeviceChoice {
    /// The libtorch device, checking that CUDA is there when asked for.
    pub fn resolve(self) -> anyhow::Result<Device> {
        Ok(match self {
            DeviceChoice::Auto => Device::cuda_if_available(),
            DeviceChoice::Cpu => Device::Cpu,
            DeviceChoice::Cuda => {
                if !tch::Cuda::is_available() {
                    bail!("--device cuda: libtorch sees no CUDA device (run `fraudgraph doctor`)");
                }
                Device::Cuda(0)
            }
        })
    }
}

/// The GNN's numeric precision.
#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum PrecisionChoice {
    /// 32-bit floats, as trained.
    F32,
    /// IEEE half precision (meant for CUDA).
    F16,
    /// bfloat16 (meant for CUDA).
    Bf16,
}

impl PrecisionChoice {
    /// The model's precision.
    pub fn precision(self) -> Precision {
        match self {
            PrecisionChoice::F32 => Precision::F32,
            PrecisionChoice::F16 => Precision::F16,
            PrecisionChoice::Bf16 => Precision::Bf16,
        }
    }
}
