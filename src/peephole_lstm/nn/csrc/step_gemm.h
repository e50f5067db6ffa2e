// The per-step GEMMs of the recurrence: the same weight for every step of a sequence, B rows per call.
// Which library runs them is chosen once per sequence, by dtype and size (why each: step_gemm.cpp).
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <vector>

namespace fused_lstm {

// a @ W^T for a weight W (N, K) fixed over a sequence, on one of: oneDNN's brgemm micro-kernel on W^T
// cut into column panels once (float32 up to depth K = 2048), the register-tiled GEMM (other dtypes,
// small and medium, AVX-512 builds), oneDNN's matmul on W reordered once (float32, deeper and large),
// MKL's at::mm (everything else).
class StepGemm {
 public:
  // `rows` of `a` in each of `steps` calls; W given whole or as column pieces side by side
  // ([W_ih | W_hh]), each copied once into the layout its GEMM reads.
  StepGemm(const at::Tensor& weight, int64_t rows, int64_t steps) : StepGemm(std::vector<at::Tensor>{weight}, rows, steps) {}
  StepGemm(const std::vector<at::Tensor>& pieces, int64_t rows, int64_t steps);

  // Each returns its result: written into `out`, or a fresh tensor from oneDNN's matmul.
  // a @ W^T.
  at::Tensor mm(const at::Tensor& a, at::Tensor& out) const;
  // other + a @ W^T (`other` may be `out`).
  at::Tensor addmm(const at::Tensor& other, const at::Tensor& a, at::Tensor& out) const;

 private:
  // Which of them runs `rows` x (N, K) weight in each of `steps` calls.
  enum class Kind { brgemm, tiled, onednn, mkl };
  static Kind kind(at::ScalarType dtype, int64_t rows, int64_t N, int64_t K, int64_t steps);

  bool onednn() const { return onednn_packed_.defined(); }
  at::Tensor tiled(const at::Tensor& a, const at::Tensor* other, at::Tensor& out) const;

  at::Tensor weight_t_;         // W^T (K, N), for MKL
  at::Tensor brgemm_panels_;    // W^T in column panels, when brgemm runs the GEMM
  at::Tensor tiled_weight_t_;   // W^T contiguous, when the tiled GEMM runs it
  at::Tensor onednn_packed_;    // W in oneDNN's blocked layout, when its matmul runs it
};

// The thresholds of that choice, in multiply-adds per call (rows * N * K) or depth (K); each setter
// returns the previous value. For tests, which force every path against the eager loop.
int64_t set_tiled_max_macs(int64_t macs);
int64_t set_brgemm_max_depth(int64_t depth);
int64_t set_onednn_min_macs(int64_t macs);

}  // namespace fused_lstm
