// The sequence kernels, for contiguous CPU tensors of one floating dtype (float32, float64, bfloat16);
// bindings.cpp checks and converts the Python side's arguments. The sizes (T, B, H, P, GH; I: input
// features), what each tensor holds and what the forward saves for the backward: docs/speed.md,
// "The C++ kernel".
#pragma once

#include "cell_layout.h"

#include <ATen/core/Tensor.h>

#include <vector>

namespace fused_lstm {

// for_backward: (out, hs, cs, acts, cn, rs), every step's states and gates for lstm_backward; else
// (out, h_T, c_T), keeping only what the next step reads. Undefined optional tensors are absent. Without
// a backward, `x` (T, B, I), `w_ih` (GH, I) and `bias` (GH) may replace xz: each step then projects its
// own input inside the recurrent GEMM.
std::vector<at::Tensor> lstm_forward(const CellLayout& layout, const at::Tensor& xz, const at::Tensor& h0,
                                     const at::Tensor& c0, const at::Tensor& w_hh, const at::Tensor& w_ch,
                                     const at::Tensor& w_hr, const at::Tensor& lengths, bool for_backward,
                                     const at::Tensor& x, const at::Tensor& w_ih, const at::Tensor& bias);

// (d xz, d h0, d c0, d w_hh, d w_ch, d w_hr) from the forward's saved tensors; incoming gradients may be
// undefined (outputs nobody used).
std::vector<at::Tensor> lstm_backward(const CellLayout& layout, const at::Tensor& grad_out, const at::Tensor& grad_hn,
                                      const at::Tensor& grad_cn, const at::Tensor& hs, const at::Tensor& cs,
                                      const at::Tensor& acts, const at::Tensor& cn, const at::Tensor& rs,
                                      const at::Tensor& w_hh, const at::Tensor& w_ch, const at::Tensor& w_hr,
                                      const at::Tensor& lengths);

}  // namespace fused_lstm
