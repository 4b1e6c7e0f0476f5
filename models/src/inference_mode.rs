//! libtorch's inference mode (`c10::InferenceMode`), which tch does not expose.
//!
//! Inference mode is no-grad with less bookkeeping: every op skips the autograd and
//! view-tracking dispatch layers, and new tensors carry no version counter. On a CPU
//! forward pass of a few hundred small ops that bookkeeping is a measurable share of the
//! time (docs/BENCHMARKS.md). The price: tensors created in inference mode ("inference
//! tensors") cannot be modified in place or saved for backward outside it. So only
//! [`crate::net::HybridFraudNet::predict`] enters it, and what it creates is either
//! returned as a fresh result (read by callers, never trained on) or kept for later
//! `predict` calls only.
//!
//! The guard lives in `cpp/inference_mode.cpp`, compiled by `build.rs`.

use std::ffi::c_void;
use std::marker::PhantomData;
use std::ptr::NonNull;

#[allow(unsafe_code)]
mod ffi {
    use std::ffi::c_void;

    unsafe extern "C" {
        pub(super) fn fraudgraph_inference_mode_enter() -> *mut c_void;
        pub(super) fn fraudgraph_inference_mode_exit(guard: *mut c_void);
        pub(super) fn fraudgraph_inference_mode_is_enabled() -> bool;
    }
}

/// Keeps the current thread in libtorch's inference mode until dropped. Not `Send`: the
/// mode is per thread, and guards must end on their thread in reverse order, which
/// scoping them ensures.
pub struct InferenceMode {
    guard: NonNull<c_void>,
    _per_thread: PhantomData<*mut ()>,
}

impl InferenceMode {
    /// Enters inference mode on this thread, or `None` if libtorch refused (it never
    /// does in practice; the caller then goes on under no-grad).
    #[allow(unsafe_code)]
    pub fn enter() -> Option<InferenceMode> {
        // SAFETY: no arguments; returns an owned guard or null.
        let raw = unsafe { ffi::fraudgraph_inference_mode_enter() };
        NonNull::new(raw).map(|guard| InferenceMode {
            guard,
            _per_thread: PhantomData,
        })
    }

    /// Whether this thread is in inference mode.
    #[allow(unsafe_code)]
    pub fn is_enabled() -> bool {
        // SAFETY: reads a thread-local flag.
        unsafe { ffi::fraudgraph_inference_mode_is_enabled() }
    }
}

impl Drop for InferenceMode {
    #[allow(unsafe_code)]
    fn drop(&mut self) {
        // SAFETY: the guard came from `enter` on this thread (the type is not `Send`) and
        // is freed exactly once.
        unsafe { ffi::fraudgraph_inference_mode_exit(self.guard.as_ptr()) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{Kind, Tensor};

    #[test]
    fn the_guard_enters_and_leaves_inference_mode_nested() {
        assert!(!InferenceMode::is_enabled());
        {
            let _outer = InferenceMode::enter().expect("inference mode");
            assert!(InferenceMode::is_enabled());
            {
                let _inner = InferenceMode::enter().expect("nested inference mode");
                assert!(InferenceMode::is_enabled());
            }
            assert!(InferenceMode::is_enabled());
        }
        assert!(!InferenceMode::is_enabled());
    }

    #[test]
    fn tensors_made_inside_are_usable_outside_except_in_place() {
        let w = Tensor::ones([3], (Kind::Float, tch::Device::Cpu)).set_requires_grad(true);
        let y = {
            let _mode = InferenceMode::enter().expect("inference mode");
            let y = &w * 2.0;
            assert!(
                !y.requires_grad(),
                "no autograd graph inside inference mode"
            );
            y
        };
        // Read and used functionally outside: fine.
        assert_eq!(Vec::<f32>::try_from(&y + 1.0).unwrap(), [3.0, 3.0, 3.0]);
        // Modified in place outside: libtorch refuses, which is why `predict` never hands
        // its tensors to code that trains.
        let mut y = y;
        assert!(y.f_add_(&Tensor::from(1.0f32)).is_err());
    }
}
