// c10::InferenceMode for fraudgraph-models' Rust side: tch exposes only the no-grad guard.
//
// InferenceMode is no-grad plus less bookkeeping per op: the autograd and view-tracking
// dispatch keys are skipped and new tensors carry no version counter. Tensors created under
// it ("inference tensors") must not be modified in place or saved for backward outside it;
// see models/src/inference_mode.rs for how the Rust side keeps to that.
#include <c10/core/InferenceMode.h>

extern "C" {

// Enters inference mode on the calling thread. Returns the guard to pass to
// fraudgraph_inference_mode_exit on the same thread, or null if it could not be entered.
void* fraudgraph_inference_mode_enter() noexcept {
  try {
    return new c10::InferenceMode(true);
  } catch (...) {
    return nullptr;
  }
}

// Restores the thread's state from before the matching enter. Guards end in reverse order.
void fraudgraph_inference_mode_exit(void* guard) noexcept {
  delete static_cast<c10::InferenceMode*>(guard);
}

// Whether the calling thread is in inference mode.
bool fraudgraph_inference_mode_is_enabled() noexcept {
  return c10::InferenceMode::is_enabled();
}

}  // extern "C"
