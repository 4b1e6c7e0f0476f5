//! `fraudgraph doctor`: is this machine ready to serve? Reports the libtorch
//! the binary runs with (and the one it was built against), CUDA, LightGBM
//! and, when asked, whether the Kafka broker answers. Each check really runs
//! its component (a matmul, a tiny LightGBM model, a metadata request); the
//! command fails when any check fails. It also warns (without failing) when the
//! host would put the graph on transparent huge pages (see [`crate::host`]).

use std::time::Duration;

use clap::Args;
use fraudgraph_models::runtime::{self, LIGHTGBM_VERSION};
use serde_json::json;
use tch::Device;

use crate::host::HugePages;
use crate::kafka;

/// Arguments of `fraudgraph doctor`.
#[derive(Args)]
pub struct DoctorArgs {
    /// Also check that the Kafka brokers (host:port,...) answer.
    #[arg(long, env = "FRAUDGRAPH_KAFKA_BROKERS")]
    kafka_brokers: Option<String>,
    /// Seconds to wait for the broker.
    #[arg(long, default_value_t = 5)]
    kafka_timeout_s: u64,
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
}

/// Runs the subcommand.
pub fn run(args: DoctorArgs) -> anyhow::Result<()> {
    let mut failures: Vec<String> = Vec::new();
    let torch = runtime::torch_runtime();
    if !torch.loaded_matches_built() {
        failures.push(format!(
            "libtorch loaded at run time ({}) differs from the one built against ({})",
            torch.loaded_version.as_deref().unwrap_or("unknown"),
            torch.built_version
        ));
    }
    let cpu_check = runtime::torch_smoke_test(Device::Cpu);
    if let Err(e) = &cpu_check {
        failures.push(format!("libtorch CPU check: {e}"));
    }
    let cuda_check = torch
        .cuda_available
        .then(|| runtime::torch_smoke_test(Device::Cuda(0)));
    if let Some(Err(e)) = &cuda_check {
        failures.push(format!("libtorch CUDA check: {e}"));
    }
    let lightgbm = runtime::lightgbm_smoke_test();
    if let Err(e) = &lightgbm {
        failures.push(format!("LightGBM check: {e}"));
    }
    let huge_pages = HugePages::detect();
    let huge_page_warning = huge_pages.warning();
    let kafka = args.kafka_brokers.as_deref().map(|brokers| {
        let result = kafka::check_broker(brokers, Duration::from_secs(args.kafka_timeout_s));
        if let Err(e) = &result {
            failures.push(format!("Kafka: {e:#}"));
        }
        (brokers, result)
    });

    if args.json {
        let report = json!({
            "fraudgraph": env!("CARGO_PKG_VERSION"),
            "libtorch": {
                "version": torch.loaded_version,
                "built_against": torch.built_version,
                "loaded_from": torch.loaded_from,
                "torch_cuda_linked": torch.torch_cuda_linked,
                "cuda_available": torch.cuda_available,
                "cuda_devices": torch.cuda_device_count,
                "cudnn_available": torch.cudnn_available,
                "cpu_check": cpu_check.as_ref().is_ok(),
                "cuda_check": cuda_check.as_ref().map(|c| c.is_ok()),
            },
            "lightgbm": {
                "version": LIGHTGBM_VERSION,
                "model_format": lightgbm.as_ref().ok().map(|l| l.model_format.clone()),
                "check": lightgbm.is_ok(),
                "single_row_predict_us": lightgbm.as_ref().ok().map(|l| l.single_row_predict_us),
            },
            "kafka": kafka.as_ref().map(|(brokers, r)| json!({
                "brokers": brokers,
                "answers": r.is_ok(),
                "cluster_brokers": r.as_ref().ok().map(|i| i.brokers),
                "topics": r.as_ref().ok().map(|i| i.topics.len()),
            })),
            "huge_pages": {
                "thp": huge_pages.thp,
                "glibc_hugetlb": huge_pages.glibc_hugetlb,
                "warning": huge_page_warning,
            },
            "ok": failures.is_empty(),
            "failures": failures,
        });
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        let yes_no = |b: bool| if b { "yes" } else { "no" };
        println!("fraudgraph {}", env!("CARGO_PKG_VERSION"));
        println!(
            "libtorch     {} (built against {})",
            torch.loaded_version.as_deref().unwrap_or("unknown"),
            torch.built_version
        );
        if let Some(path) = &torch.loaded_from {
            println!("  loaded from {}", path.display());
        }
        println!(
            "  libtorch_cuda linked: {}",
            yes_no(torch.torch_cuda_linked)
        );
        println!(
            "  CUDA available: {} ({} device{}), cuDNN: {}",
            yes_no(torch.cuda_available),
            torch.cuda_device_count,
            if torch.cuda_device_count == 1 {
                ""
            } else {
                "s"
            },
            yes_no(torch.cudnn_available)
        );
        println!(
            "  CPU tensor check: {}",
            if cpu_check.is_ok() { "ok" } else { "FAILED" }
        );
        if let Some(check) = &cuda_check {
            println!(
                "  CUDA tensor check: {}",
                if check.is_ok() { "ok" } else { "FAILED" }
            );
        }
        match &lightgbm {
            Ok(l) => println!(
                "LightGBM     {LIGHTGBM_VERSION} (model format {}), check ok: training accuracy {:.3}, single-row predict {:.1} µs",
                l.model_format, l.train_accuracy, l.single_row_predict_us
            ),
            Err(_) => println!("LightGBM     {LIGHTGBM_VERSION}, check FAILED"),
        }
        if let Some((brokers, result)) = &kafka {
            match result {
                Ok(info) => println!(
                    "Kafka        {brokers} answers: {} broker(s), {} topic(s)",
                    info.brokers,
                    info.topics.len()
                ),
                Err(_) => println!("Kafka        {brokers} does NOT answer"),
            }
        }
        println!(
            "Memory       transparent huge pages: {}, glibc hugetlb tunable: {}",
            huge_pages.thp.as_deref().unwrap_or("unknown"),
            huge_pages.glibc_hugetlb.as_deref().unwrap_or("not set")
        );
        if let Some(warning) = &huge_page_warning {
            println!("WARNING: {warning}");
        }
        for f in &failures {
            println!("FAILED: {f}");
        }
    }
    if failures.is_empty() {
        Ok(())
    } else {
        anyhow::bail!("{} check(s) failed", failures.len())
    }
}
