// A vector-Jacobian product through torch's autograd with the output's gradient given, for
// src/libtorch_autograd.rs. tch 0.22 starts a backward pass only from the outputs themselves
// (`run_backward`), so the product otherwise needs the scalar Σ out ⊙ grad: a multiply and a sum
// forward and their backward, three extra passes over an attention output per layer.

#include <torch/csrc/autograd/autograd.h>

#include <vector>

#include "guarded.h"

extern "C" {

// results[i] = d⟨out, grad⟩ / d inputs[i] (new tensors the caller owns), freeing the graph.
int llama_vjp(const at::Tensor* out, const at::Tensor* grad, const at::Tensor* const* inputs,
              size_t n, at::Tensor** results, char* err, size_t len) {
  return guarded(err, len, [&] {
    std::vector<at::Tensor> wrt;
    wrt.reserve(n);
    for (size_t i = 0; i < n; ++i) wrt.push_back(*inputs[i]);
    auto grads = torch::autograd::grad({*out}, wrt, {*grad}, /*retain_graph=*/false,
                                       /*create_graph=*/false, /*allow_unused=*/false);
    for (size_t i = 0; i < n; ++i) results[i] = new at::Tensor(std::move(grads[i]));
  });
}

}  // extern "C"
