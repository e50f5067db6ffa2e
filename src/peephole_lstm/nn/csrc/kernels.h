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
// (out, h_T, c_T), keeping only what the next step reads. Undefined optional tensors are absent. `x`
// (T, B, I), `w_ih` (GH, I) and `bias` (GH) may replace xz: each step then projects its own input inside
// the recurrent GEMM, and hs (T+1, B, I + P) holds the GEMM's rows [x_t | h_{t-1}].
std::vector<at::Tensor> lstm_forward(const CellLayout& layout, const at::Tensor& xz, const at::Tensor& h0,
                                     const at::Tensor& c0, const at::Tensor& w_hh, const at::Tensor& w_ch,
                                     const at::Tensor& w_hr, const at::Tensor& lengths, bool for_backward,
                                     const at::Tensor& x, const at::Tensor& w_ih, const at::Tensor& bias);

// (d xz, d h0, d c0, d w_hh, d w_ch, d w_hr, d w_ih, d bias) from the forward's saved tensors; incoming
// gradients may be undefined (outputs nobody used). input_size > 0: the forward fused the input projection
// and hs holds the rows [x_t | h_{t-1}] (input_size + P wide), so d w_ih comes from the same GEMM as
// d w_hh (else it is undefined); d bias (the column sums of d xz) only when bias_grad.
std::vector<at::Tensor> lstm_backward(const CellLayout& layout, const at::Tensor& grad_out, const at::Tensor& grad_hn,
                                      const at::Tensor& grad_cn, const at::Tensor& hs, const at::Tensor& cs,
                                      const at::Tensor& acts, const at::Tensor& cn, const at::Tensor& rs,
                                      const at::Tensor& w_hh, const at::Tensor& w_ch, const at::Tensor& w_hr,
                                      const at::Tensor& lengths, int64_t input_size, bool bias_grad);

}  // namespace fused_lstm
