//! `--device`: where libtorch runs, shared by the commands that run the GNN.

use anyhow::bail;
use clap::ValueEnum;
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
