// The hand-written BPTT backward: SequenceBackward::step runs one step's phases in reverse, and the
// weight gradients wait until after the loop (docs/speed.md, "The C++ kernel", says what it reads and why).
#include "buffer_cache.h"
#include "kernels.h"
#include "pointwise.h"
#include "step_gemm.h"

#include <ATen/ATen.h>
#include <ATen/OpMathType.h>

#include <algorithm>
#include <limits>
#include <optional>
#include <tuple>
#include <utility>
#include <vector>

namespace fused_lstm {
namespace {

// The gradient of the state carried out of step t (dh, dc; dh plus the output's gradient) split into the
// step's new state (d_h_new, d_c_new) and the part zoneout or padding carries straight to step t-1.
template <typename S, typename A>
void split_carried_gradient(int64_t P, int64_t H, A zoneout, bool live, const S* __restrict__ dh,
                            const S* __restrict__ dc, const S* __restrict__ grad_out, int64_t grad_out_stride,
                            S* __restrict__ d_h_new, S* __restrict__ d_h_carry, S* __restrict__ d_c_new,
                            S* __restrict__ d_c_carry) {
  if (!live) {
    std::fill(d_h_new, d_h_new + P, S(0));
    std::copy(dh, dh + P, d_h_carry);
    std::fill(d_c_new, d_c_new + H, S(0));
    std::copy(dc, dc + H, d_c_carry);
    return;
  }
  #pragma GCC ivdep
  for (int64_t j = 0; j < P; ++j) {
    const A grad = A(dh[j]) + A(grad_out[j * grad_out_stride]);
    d_h_new[j] = grad * (1 - zoneout);
    d_h_carry[j] = grad * zoneout;
  }
  #pragma GCC ivdep
  for (int64_t j = 0; j < H; ++j) {
    const A grad = dc[j];
    d_c_new[j] = grad * (1 - zoneout);
    d_c_carry[j] = grad * zoneout;
  }
}

// Backward of the output gate: dz_o, and dL/dc_t up to (not through) the clip, from
// d_cell_out = dL/d(o * act_out(c)).
template <typename S, typename A, bool tanh_output>  // a template flag: GCC 12 does not vectorise a select on a bool argument here
void output_gate_gradient(int64_t H, A clip, const S* __restrict__ c_pre_clip, const S* __restrict__ d_cell_out,
                          const S* __restrict__ d_c_new, const S* __restrict__ o,
                          const S* __restrict__ diag_o_current, S* __restrict__ dz_o, S* __restrict__ d_c) {
  #pragma GCC ivdep
  for (int64_t j = 0; j < H; ++j) {
    const A c_unclipped = c_pre_clip[j];
    const A lo = c_unclipped < -clip ? -clip : c_unclipped;
    const A c = lo > clip ? clip : lo;
    const A tanh_c = tanh_act(c);  // computed either way: a select vectorises, a branch does not
    const A act_c = tanh_output ? tanh_c : c;
    const A d_act_c = tanh_output ? 1 - tanh_c * tanh_c : A(1);
    const A o_j = o[j];
    const A dz = A(d_cell_out[j]) * act_c * o_j * (1 - o_j);
    dz_o[j] = dz;
    d_c[j] = A(d_c_new[j]) + A(d_cell_out[j]) * o_j * d_act_c + dz * A(diag_o_current[j]);
  }
}

// Backward of the cell update and the i, f, g gates; d_c_prev = dL/dc_{t-1} (diagonal peepholes
// included). d_c is dL/dc_t, which the clip zeroes where it was active.
template <typename S, typename A, bool coupled, bool tanh_input>
void cell_gradient(int64_t H, A clip, const S* __restrict__ f_gate, const S* __restrict__ i_gate,
                   const S* __restrict__ g_gate, const S* __restrict__ c_prev, const S* __restrict__ c_pre_clip,
                   const S* __restrict__ d_c, const S* __restrict__ d_c_carry, const S* __restrict__ dz_o,
                   const S* __restrict__ diag_i, const S* __restrict__ diag_f, const S* __restrict__ diag_o_prev,
                   S* __restrict__ dz_i, S* __restrict__ dz_f, S* __restrict__ dz_g, S* __restrict__ d_c_prev) {
  #pragma GCC ivdep
  for (int64_t j = 0; j < H; ++j) {
    const A c_unclipped = c_pre_clip[j];
    const A d_c_low = c_unclipped < -clip ? A(0) : A(d_c[j]);
    const A d_cell = c_unclipped > clip ? A(0) : d_c_low;
    const A f = f_gate[j];
    const A i = coupled ? 1 - f : A(i_gate[j]);
    const A g = g_gate[j];
    const A d_i = d_cell * g;
    const A d_f = d_cell * A(c_prev[j]) - (coupled ? d_i : A(0));
    const A dz_i_j = d_i * i * (1 - i);
    const A dz_f_j = d_f * f * (1 - f);
    dz_g[j] = tanh_input ? d_cell * i * (1 - g * g) : d_cell * i;
    dz_i[j] = dz_i_j;
    dz_f[j] = dz_f_j;
    d_c_prev[j] = d_cell * f + A(d_c_carry[j]);
  }
  // A separate pass: with these three terms in the loop above GCC 12 gives up vectorising it.
  #pragma GCC ivdep
  for (int64_t j = 0; j < H; ++j)
    d_c_prev[j] = A(d_c_prev[j]) + A(dz_i[j]) * A(diag_i[j]) + A(dz_f[j]) * A(diag_f[j]) + A(dz_o[j]) * A(diag_o_prev[j]);
}

// dw[j] = sum_n d[n, j] * src[n, j] (d with row stride ld): one pass, no temporary of N*H elements.
template <typename S, typename A>
void diagonal_peephole_gradient(int64_t N, int64_t H, int64_t ld, const S* d, const S* src, S* dw) {
  std::vector<A> acc(H, A(0));
  A* __restrict__ sum = acc.data();
  for (int64_t n = 0; n < N; ++n) {
    const S* __restrict__ d_row = d + n * ld;
    const S* __restrict__ src_row = src + n * H;
#pragma GCC ivdep
    for (int64_t j = 0; j < H; ++j) sum[j] += A(d_row[j]) * A(src_row[j]);
  }
  for (int64_t j = 0; j < H; ++j) dw[j] = acc[j];
}

template <typename S>
class SequenceBackward {
  using A = at::opmath_type<S>;

 public:
  // hs, cs, acts, cn, rs: the forward's saved h and c states (T+1 each), gate activations, pre-clip
  // cells (undefined unless kept) and projection inputs o * act_out(c) (undefined without a projection).
  SequenceBackward(const CellLayout& layout, const at::Tensor& grad_out, const at::Tensor& grad_hn,
                   const at::Tensor& grad_cn, const at::Tensor& hs, const at::Tensor& cs, const at::Tensor& acts,
                   const at::Tensor& cn, const at::Tensor& rs, const at::Tensor& w_hh, const at::Tensor& w_ch,
                   const at::Tensor& w_hr, const at::Tensor& lengths)
      : layout_(layout),
        h_states_(hs),
        c_states_(cs),
        gates_(acts),
        c_pre_clip_(cn),
        cell_outs_(rs),
        w_ch_(w_ch),
        w_hr_(w_hr),
        projected_(w_hr.defined()),
        T(acts.size(0)),
        B(acts.size(1)),
        GH(acts.size(2)),
        H(cs.size(2)),
        P(hs.size(2)),
        zoneout_(static_cast<A>(layout.zoneout)),
        clip_(layout.cell_clip > 0 ? static_cast<A>(layout.cell_clip) : std::numeric_limits<A>::infinity()),
        options_(acts.options()),
        lengths_(lengths.defined() ? lengths.data_ptr<int64_t>() : nullptr),
        grad_out_(grad_out.defined() ? grad_out.data_ptr<S>() : nullptr) {
    allocate(grad_hn, grad_cn, w_hh);
  }

  std::vector<at::Tensor> run() {
    for (int64_t t = T - 1; t >= 0; --t) step(t);
    auto [dw_hh, dw_ch, dw_hr] = weight_gradients();
    return {d_preacts_, d_h_, d_c_, dw_hh, dw_ch, dw_hr};
  }

 private:
  void allocate(const at::Tensor& grad_hn, const at::Tensor& grad_cn, const at::Tensor& w_hh) {
    d_preacts_ = workspace({T, B, GH}, options_);  // the input projection's gradient: autograd frees it
    d_h_new_all_ = projected_ ? workspace({T, B, P}, options_) : at::Tensor();
    d_h_ = grad_hn.defined() ? grad_hn.contiguous().clone() : at::zeros({B, P}, options_);
    d_c_ = grad_cn.defined() ? grad_cn.contiguous().clone() : at::zeros({B, H}, options_);
    d_h_carry_ = at::empty({B, P}, options_);
    d_c_carry_ = at::empty({B, H}, options_);
    d_c_new_ = at::empty({B, H}, options_);
    d_cell_out_ = at::empty({B, H}, options_);
    d_c_step_ = at::empty({B, H}, options_);
    d_h_prev_ = at::empty({B, P}, options_);
    recurrent_gemm_.emplace(w_hh.t(), B, T);  // dZ_t W_hh = dZ_t (W_hh^T)^T
    d_c_prev_ = at::empty({B, H}, options_);
    ones_ = at::ones({H}, options_);
    zeros_ = at::zeros({H}, options_);
    sink_ = at::empty({B, 2 * H}, options_);  // where the gradients of absent gates go
    // Full peepholes, transposed as in the forward: dc_t += dz_o W_o, dc_{t-1} += [dz_i dz_f ..] [W_i; W_f; ..].
    prev_gates_ = prev_peephole_gates(layout_);  // empty unless full peepholes read c_{t-1}
    if (!prev_gates_.empty()) prev_peephole_gemm_.emplace(stacked_prev_peepholes(layout_, w_ch_).t(), B, T);
    if (layout_.full_o_reads_current()) o_peephole_gemm_.emplace(w_ch_[layout_.peephole_o].t(), B, T);
    const S* diagonal = (w_ch_.defined() && !layout_.full_peepholes) ? w_ch_.data_ptr<S>() : nullptr;
    const S* zeros = zeros_.data_ptr<S>();
    // A gate's diagonal peephole row where it reads this cell, else zeros.
    auto diagonal_row = [&](int64_t block, int64_t row, bool reads_this_cell) {
      return (block >= 0 && row >= 0 && diagonal && reads_this_cell) ? diagonal + row * H : zeros;
    };
    diag_i_ = diagonal_row(layout_.block_i, layout_.peephole_i, true);
    diag_f_ = diagonal_row(layout_.block_f, layout_.peephole_f, true);
    diag_o_prev_ = diagonal_row(layout_.block_o, layout_.peephole_o, !layout_.o_reads_current);
    diag_o_current_ = diagonal_row(layout_.block_o, layout_.peephole_o, layout_.o_reads_current);
  }

  void step(int64_t t) {
    // Without a projection the step's new h is the cell output: its gradient goes straight there.
    const at::Tensor d_h_new = projected_ ? d_h_new_all_[t] : d_cell_out_;
    split_state_gradient(t, d_h_new);
    if (projected_) at::mm_out(d_cell_out_, d_h_new, w_hr_);
    output_gate_backward(t);
    cell_backward(t);
    to_previous_step(t);
  }

  bool live(int64_t b, int64_t t) const { return !lengths_ || lengths_[b] > t; }

  // The pre-clip cell of step t: kept with clip or zoneout, else the carried state c_t itself.
  const S* c_pre_clip(int64_t t) const {
    return layout_.keeps_pre_clip_cell() ? c_pre_clip_.data_ptr<S>() + t * B * H
                                         : c_states_.data_ptr<S>() + (t + 1) * B * H;
  }

  void split_state_gradient(int64_t t, const at::Tensor& d_h_new) {
    const S* dh = d_h_.data_ptr<S>();
    const S* dc = d_c_.data_ptr<S>();
    S* d_h_new_ptr = d_h_new.data_ptr<S>();
    S* d_h_carry = d_h_carry_.data_ptr<S>();
    S* d_c_new = d_c_new_.data_ptr<S>();
    S* d_c_carry = d_c_carry_.data_ptr<S>();
    const S* grad_out = grad_out_ ? grad_out_ + t * B * P : nullptr;
    const S* zeros = zeros_.data_ptr<S>();
    for_rows(B, P + H, [&](int64_t b) {
      // No gradient for the output: read element 0 of a row of zeros P times.
      split_carried_gradient<S, A>(P, H, zoneout_, live(b, t), dh + b * P, dc + b * H,
                                   grad_out ? grad_out + b * P : zeros, grad_out ? 1 : 0, d_h_new_ptr + b * P,
                                   d_h_carry + b * P, d_c_new + b * H, d_c_carry + b * H);
    });
  }

  // dz_o and dL/dc_t, then o's full peephole on c_t: dc_t += dz_o W_o.
  void output_gate_backward(int64_t t) {
    const S* gates = gates_.data_ptr<S>() + t * B * GH;
    const S* c_unclipped = c_pre_clip(t);
    const S* d_cell_out = d_cell_out_.data_ptr<S>();
    const S* d_c_new = d_c_new_.data_ptr<S>();
    const S* ones = ones_.data_ptr<S>();
    S* d_preacts = d_preacts_.data_ptr<S>() + t * B * GH;
    S* d_c_step = d_c_step_.data_ptr<S>();
    S* sink = sink_.data_ptr<S>();
    const int64_t col_o = layout_.block_o * H;  // first column of o's block
    for_rows(B, H, [&](int64_t b) {
      auto row = layout_.tanh_output ? output_gate_gradient<S, A, true> : output_gate_gradient<S, A, false>;
      row(H, clip_, c_unclipped + b * H, d_cell_out + b * H, d_c_new + b * H,
          layout_.block_o >= 0 ? gates + b * GH + col_o : ones, diag_o_current_,
          layout_.block_o >= 0 ? d_preacts + b * GH + col_o : sink + b * 2 * H, d_c_step + b * H);
    });
    if (o_peephole_gemm_)
      d_c_step_ = o_peephole_gemm_->addmm(d_c_step_, d_preacts_[t].narrow(1, col_o, H), d_c_step_);
  }

  // The other gates and dL/dc_{t-1}; padded rows pass the carried gradient through untouched.
  void cell_backward(int64_t t) {
    const S* gates = gates_.data_ptr<S>() + t * B * GH;
    const S* c_prev = c_states_.data_ptr<S>() + t * B * H;
    const S* c_unclipped = c_pre_clip(t);
    const S* d_c_step = d_c_step_.data_ptr<S>();
    const S* d_c_carry = d_c_carry_.data_ptr<S>();
    const S* ones = ones_.data_ptr<S>();
    const S* zeros = zeros_.data_ptr<S>();
    S* d_preacts = d_preacts_.data_ptr<S>() + t * B * GH;
    S* d_c_prev = d_c_prev_.data_ptr<S>();
    S* sink = sink_.data_ptr<S>();
    // First column of each gate's block (only used when the gate exists).
    const int64_t col_i = layout_.block_i * H, col_f = layout_.block_f * H, col_g = layout_.block_g * H,
                  col_o = layout_.block_o * H;
    for_rows(B, GH, [&](int64_t b) {
      S* dz = d_preacts + b * GH;
      if (!live(b, t)) {
        std::fill(dz, dz + GH, S(0));
        std::copy(d_c_carry + b * H, d_c_carry + (b + 1) * H, d_c_prev + b * H);
        return;
      }
      const S* row_gates = gates + b * GH;
      auto row = layout_.coupled
                     ? (layout_.tanh_input ? cell_gradient<S, A, true, true> : cell_gradient<S, A, true, false>)
                     : (layout_.tanh_input ? cell_gradient<S, A, false, true> : cell_gradient<S, A, false, false>);
      row(H, clip_, layout_.block_f >= 0 ? row_gates + col_f : ones, layout_.block_i >= 0 ? row_gates + col_i : ones,
          row_gates + col_g, c_prev + b * H, c_unclipped + b * H, d_c_step + b * H, d_c_carry + b * H,
          layout_.block_o >= 0 ? dz + col_o : zeros, diag_i_, diag_f_, diag_o_prev_,
          layout_.block_i >= 0 ? dz + col_i : sink + b * 2 * H,
          layout_.block_f >= 0 ? dz + col_f : sink + b * 2 * H + H, dz + col_g, d_c_prev + b * H);
    });
  }

  // dc_{t-1} += the full peepholes reading it; dh_{t-1} = carried part + dZ_t W_hh. They become the
  // carried gradients of step t-1.
  void to_previous_step(int64_t t) {
    auto dz_t = d_preacts_[t];
    if (prev_peephole_gemm_)
      d_c_prev_ = prev_peephole_gemm_->addmm(d_c_prev_, prev_peephole_columns(prev_gates_, dz_t, H), d_c_prev_);
    d_h_prev_ = recurrent_gemm_->addmm(d_h_carry_, dz_t, d_h_prev_);
    std::swap(d_h_, d_h_prev_);
    std::swap(d_c_, d_c_prev_);
  }

  // One GEMM (or reduction) over all T*B rows each: (dW_hh, dW_ch, dW_hr).
  std::tuple<at::Tensor, at::Tensor, at::Tensor> weight_gradients() {
    auto d_preacts = d_preacts_.view({T * B, GH});
    auto dw_hh = at::mm(d_preacts.t(), h_states_.narrow(0, 0, T).reshape({T * B, P}));
    at::Tensor dw_hr, dw_ch;
    if (projected_) dw_hr = at::mm(d_h_new_all_.view({T * B, P}).t(), cell_outs_.view({T * B, H}));
    if (w_ch_.defined()) {
      auto c_old = c_states_.narrow(0, 0, T).reshape({T * B, H});
      auto c_new = layout_.keeps_pre_clip_cell() ? c_pre_clip_.view({T * B, H})
                                                 : c_states_.narrow(0, 1, T).reshape({T * B, H});
      if (layout_.keeps_pre_clip_cell() && layout_.cell_clip > 0)
        c_new = c_new.clamp(-layout_.cell_clip, layout_.cell_clip);
      dw_ch = at::zeros_like(w_ch_);
      auto peephole_gradient = [&](int64_t row, int64_t block, const at::Tensor& cell) {
        auto d = d_preacts.narrow(1, block * H, H);
        if (layout_.full_peepholes)
          dw_ch[row].copy_(at::mm(d.t(), cell));
        else
          diagonal_peephole_gradient<S, A>(T * B, H, GH, d.data_ptr<S>(), cell.data_ptr<S>(), dw_ch[row].data_ptr<S>());
      };
      if (layout_.block_i >= 0 && layout_.peephole_i >= 0) peephole_gradient(layout_.peephole_i, layout_.block_i, c_old);
      if (layout_.block_f >= 0 && layout_.peephole_f >= 0) peephole_gradient(layout_.peephole_f, layout_.block_f, c_old);
      if (layout_.block_o >= 0 && layout_.peephole_o >= 0)
        peephole_gradient(layout_.peephole_o, layout_.block_o, layout_.o_reads_current ? c_new : c_old);
    }
    return {dw_hh, dw_ch, dw_hr};
  }

  const CellLayout layout_;
  const at::Tensor h_states_, c_states_, gates_, c_pre_clip_, cell_outs_, w_ch_, w_hr_;
  const bool projected_;
  const int64_t T, B, GH, H, P;
  const A zoneout_, clip_;
  const at::TensorOptions options_;
  const int64_t* const lengths_;
  const S* const grad_out_;

  at::Tensor d_preacts_;    // (T, B, GH) dL/d(pre-activations): the input projection's gradient, kept for the weights'
  at::Tensor d_h_new_all_;  // (T, B, P) dL/d(each step's projected h before zoneout), for dW_hr
  at::Tensor d_h_, d_c_;    // the gradient carried into the current step from the later ones
  at::Tensor d_h_carry_, d_c_carry_;  // its part that zoneout or padding passes straight to step t-1
  at::Tensor d_c_new_;      // its part on the step's new cell
  at::Tensor d_cell_out_;   // dL/d(o * act_out(c_t))
  at::Tensor d_c_step_;     // dL/dc_t through everything that reads it in the step
  at::Tensor d_h_prev_, d_c_prev_;  // dL/dh_{t-1}, dL/dc_{t-1}: swapped into d_h_, d_c_ after each step
  at::Tensor ones_, zeros_, sink_;
  std::optional<StepGemm> recurrent_gemm_, prev_peephole_gemm_, o_peephole_gemm_;
  std::vector<std::pair<int64_t, int64_t>> prev_gates_;
  const S* diag_i_ = nullptr;
  const S* diag_f_ = nullptr;
  const S* diag_o_prev_ = nullptr;
  const S* diag_o_current_ = nullptr;
};

}  // namespace

std::vector<at::Tensor> lstm_backward(const CellLayout& layout, const at::Tensor& grad_out, const at::Tensor& grad_hn,
                                      const at::Tensor& grad_cn, const at::Tensor& hs, const at::Tensor& cs,
                                      const at::Tensor& acts, const at::Tensor& cn, const at::Tensor& rs,
                                      const at::Tensor& w_hh, const at::Tensor& w_ch, const at::Tensor& w_hr,
                                      const at::Tensor& lengths) {
  std::vector<at::Tensor> results;
  AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, acts.scalar_type(), "fused_lstm_backward", [&] {
    results = SequenceBackward<scalar_t>(layout, grad_out, grad_hn, grad_cn, hs, cs, acts, cn, rs, w_hh, w_ch, w_hr,
                                         lengths)
                  .run();
  });
  return results;
}

}  // namespace fused_lstm
