//! The inference thread: owns the model artifact (the net and its device) and runs one
//! forward pass per staged batch, then hands the staging buffer back to the batcher. The
//! pass runs through libtorch, or with the native backend ([`NativeNet`], a copy of the
//! net's weights) on the buffer's collated batch without libtorch.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};
use fraudgraph_models::artifact::Artifact;
use fraudgraph_models::net::NativeNet;
use tch::Device;

use super::batcher::{Staged, StagingBuffer};
use super::{GnnScore, micros};
use crate::metrics::Metrics;

/// The inference thread's state.
pub(super) struct InferenceWorker {
    pub(super) artifact: Artifact,
    /// The native backend's copy of the net, when it runs the passes.
    pub(super) native: Option<NativeNet>,
    pub(super) staged: Receiver<Staged>,
    pub(super) free: Sender<StagingBuffer>,
    pub(super) ready: Arc<AtomicBool>,
    pub(super) threads: usize,
    pub(super) delay: Duration,
    pub(super) metrics: Arc<Metrics>,
}

impl InferenceWorker {
    /// Runs batches until the batcher stops.
    pub(super) fn run(self) {
        tch::set_num_threads(self.threads as i32);
        self.ready.store(true, Ordering::Release);
        while let Ok(Staged {
            buffer,
            tensors,
            waiters,
        }) = self.staged.recv()
        {
            if !self.delay.is_zero() {
                std::thread::sleep(self.delay);
            }
            let started = Instant::now();
            let scores = tensors.and_then(|t| {
                match (&self.native, t) {
                    (Some(native), _) => buffer.parts().iter().try_fold(
                        Vec::with_capacity(waiters.len()),
                        |mut scores, part| {
                            scores.extend(native.predict(part)?);
                            Ok(scores)
                        },
                    ),
                    (None, Some(t)) => self.artifact.net.predict(&t).and_then(|p| {
                        p.f_to_device(Device::Cpu)
                            .and_then(|p| Vec::<f32>::try_from(&p))
                            .map_err(|e| fraudgraph_models::net::NetError::Torch(e.to_string()))
                    }),
                    (None, None) => unreachable!("the batcher makes tensors for libtorch"),
                }
                .map_err(|e| e.to_string())
            });
            let elapsed = started.elapsed();
            self.metrics
                .gnn_batch_duration
                .observe(elapsed.as_secs_f64());
            let inference_us = micros(elapsed);
            match scores {
                Ok(scores) if scores.len() == waiters.len() => {
                    for (w, score) in waiters.into_iter().zip(scores) {
                        let _ = w.reply.send(Ok(GnnScore {
                            score,
                            batch_wait_us: micros(started.saturating_duration_since(w.enqueued)),
                            inference_us,
                        }));
                    }
                }
                Ok(scores) => {
                    self.metrics.inference_errors.inc();
                    let e = format!("{} scores for {} requests", scores.len(), waiters.len());
                    for w in waiters {
                        let _ = w.reply.send(Err(e.clone()));
                    }
                }
                Err(e) => {
                    self.metrics.inference_errors.inc();
                    tracing::error!(error = %e, "GNN batch failed");
                    for w in waiters {
                        let _ = w.reply.send(Err(e.clone()));
                    }
                }
            }
            if self.free.send(buffer).is_err() {
                return;
            }
        }
        self.ready.store(false, Ordering::Release);
    }
}
