// CUDA graphs of libtorch work, for the `llama` tool's decoder (src/cuda_graph.rs).
//
// tch exposes neither torch's CUDAGraph nor a way to make a stream current, and both are needed:
// a capture cannot run on the legacy default stream torch uses, and torch's caching allocator
// must hand the captured operations memory from the graph's own pool. This wraps
// at::cuda::CUDAGraph (what torch.cuda.graph uses) behind a C interface; every entry point
// catches C++ exceptions and returns their message.

#include <ATen/cuda/CUDAGraph.h>
#include <c10/cuda/CUDAFunctions.h>
#include <c10/cuda/CUDAStream.h>

#include <optional>

#include "guarded.h"

namespace {

struct Graph {
  at::cuda::CUDAGraph graph;
  // The stream that was current before the capture, made current again after it.
  std::optional<c10::cuda::CUDAStream> previous;
};

}  // namespace

extern "C" {

void* llama_graph_new(char* err, size_t len) {
  Graph* g = nullptr;
  guarded(err, len, [&] { g = new Graph(); });
  return g;
}

void llama_graph_free(void* g) { delete static_cast<Graph*>(g); }

// Waits for the device, makes a side stream current and starts capturing it: torch operations
// from now on are recorded, not run.
int llama_graph_capture_begin(void* p, char* err, size_t len) {
  auto* g = static_cast<Graph*>(p);
  return guarded(err, len, [&] {
    c10::cuda::device_synchronize();
    g->previous = c10::cuda::getCurrentCUDAStream();
    c10::cuda::setCurrentCUDAStream(c10::cuda::getStreamFromPool());
    try {
      g->graph.capture_begin();
    } catch (...) {
      c10::cuda::setCurrentCUDAStream(*g->previous);
      throw;
    }
  });
}

// Ends the capture and instantiates the graph; the previous stream is current again either way.
int llama_graph_capture_end(void* p, char* err, size_t len) {
  auto* g = static_cast<Graph*>(p);
  return guarded(err, len, [&] {
    try {
      g->graph.capture_end();
    } catch (...) {
      c10::cuda::setCurrentCUDAStream(*g->previous);
      throw;
    }
    c10::cuda::setCurrentCUDAStream(*g->previous);
  });
}

// Launches the recorded work on the current stream.
int llama_graph_replay(void* p, char* err, size_t len) {
  auto* g = static_cast<Graph*>(p);
  return guarded(err, len, [&] { g->graph.replay(); });
}

// torch's current stream on the current device (null: the legacy default stream), so that our own
// kernels queue where torch's do, also while a graph is being captured.
void* llama_current_stream() {
  try {
    return c10::cuda::getCurrentCUDAStream().stream();
  } catch (...) {
    return nullptr;
  }
}

// Copies `src` (host memory, pinned or not) into `dst` (a device buffer) on the current stream
// without waiting for the stream: tch's copy_ passes non_blocking = false, which waits for the
// stream to drain after every copy from pageable memory. From pageable memory the driver stages
// the bytes before cudaMemcpyAsync returns, so `src` may be freed at once.
int llama_copy_async(at::Tensor* dst, const at::Tensor* src, char* err, size_t len) {
  return guarded(err, len, [&] { dst->copy_(*src, /*non_blocking=*/true); });
}

}  // extern "C"
