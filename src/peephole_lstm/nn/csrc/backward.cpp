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

// One row's terms of the diagonal peepholes' gradients, added to sums (i, f, o; H each): dz times the
// cell the gate read, c_{t-1}, or for o with output_peephole="current" the clipped c_t. Summed while
// dZ_t is in cache instead of in a pass over all T*B rows of dZ after the loop. Absent gates' dz rows
// are scratch, and their sums are never read.
template <typename S, typename A>
void diagonal_peephole_terms(int64_t H, A clip, bool o_current, const S* __restrict__ dz_i, const S* __restrict__ dz_f,
                             const S* __restrict__ dz_o, const S* __restrict__ c_prev,
                             const S* __restrict__ c_unclipped, A* __restrict__ sums) {
  #pragma GCC ivdep
  for (int64_t j = 0; j < H; ++j) {
    sums[j] += A(dz_i[j]) * A(c_prev[j]);
    sums[H + j] += A(dz_f[j]) * A(c_prev[j]);
  }
  if (o_current) {
    #pragma GCC ivdep
    for (int64_t j = 0; j < H; ++j) {
      const A c = c_unclipped[j];
      const A lo = c < -clip ? -clip : c;
      sums[2 * H + j] += A(dz_o[j]) * (lo > clip ? clip : lo);
    }
  } else {
    #pragma GCC ivdep
    for (int64_t j = 0; j < H; ++j) sums[2 * H + j] += A(dz_o[j]) * A(c_prev[j]);
  }
}

// out[j] = sum over the threads k of sums[k * stride + j], j < n: per-thread sums added up.
template <typename S, typename A>
void add_up_threads(const A* sums, int64_t stride, int64_t threads, int64_t n, S* out) {
  for (int64_t j = 0; j < n; ++j) {
    A sum = 0;
    for (int64_t k = 0; k < threads; ++k) sum += sums[k * stride + j];
    out[j] = sum;
  }
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
                   const at::Tensor& w_hr, const at::Tensor& lengths, int64_t input_size, bool bias_grad)
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
        I(input_size),
        P(hs.size(2) - input_size),
        zoneout_(static_cast<A>(layout.zoneout)),
        clip_(layout.cell_clip > 0 ? static_cast<A>(layout.cell_clip) : std::numeric_limits<A>::infinity()),
        options_(acts.options()),
        lengths_(lengths.defined() ? lengths.data_ptr<int64_t>() : nullptr),
        grad_out_(grad_out.defined() ? grad_out.data_ptr<S>() : nullptr),
        rows_in_one_pass_(!w_hr.defined() && !layout.full_o_reads_current()),
        threads_(at::get_num_threads()) {
    allocate(grad_hn, grad_cn, w_hh);
    if (bias_grad) bias_sums_.assign(threads_ * GH, A(0));
  }

  std::vector<at::Tensor> run() {
    {
      // The steps' tensor ops all work on the kernel's own buffers (a step's slice of dZ, the GEMMs into
      // the carried gradients): below autograd's view tracking, which cost ~1 us a view.
      const at::AutoDispatchBelowADInplaceOrView below_autograd;
      for (int64_t t = T - 1; t >= 0; --t) step(t);
    }
    auto [dw_ih, dw_hh, dw_ch, dw_hr] = weight_gradients();
    return {d_preacts_, d_h_, d_c_, dw_hh, dw_ch, dw_hr, dw_ih, bias_gradient()};
  }

 private:
  void allocate(const at::Tensor& grad_hn, const at::Tensor& grad_cn, const at::Tensor& w_hh) {
    d_preacts_ = workspace({T, B, GH}, options_);  // the input projection's gradient: autograd frees it
    d_h_new_all_ = projected_ ? workspace({T, B, P}, options_) : at::Tensor();
    d_h_ = grad_hn.defined() ? grad_hn.contiguous().clone() : at::zeros({B, P}, options_);
    d_c_ = grad_cn.defined() ? grad_cn.contiguous().clone() : at::zeros({B, H}, options_);
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
    // Per-thread sums of the diagonal peepholes' gradients (cell_row), added up after the loop.
    if (diagonal) diagonal_sums_.assign(threads_ * 3 * H, A(0));
  }

  void step(int64_t t) {
    // Without a projection the step's new h is the cell output: its gradient goes straight there.
    const at::Tensor d_h_new = projected_ ? d_h_new_all_[t] : d_cell_out_;
    StepRows rows = step_rows(t, d_h_new);
    if (rows_in_one_pass_) {
      // Each row's three phases in one pass over the threads, the row staying in L1 (three passes cost
      // about 45 us a step at B=64, H=128, two of them on one thread).
      for_rows(B, GH, [&](int64_t b) {
        split_row(rows, t, b);
        output_gate_row(rows, b);
        cell_row(rows, t, b);
      });
    } else {
      for_rows(B, P + H, [&](int64_t b) { split_row(rows, t, b); });
      if (projected_) at::mm_out(d_cell_out_, d_h_new, w_hr_);
      for_rows(B, H, [&](int64_t b) { output_gate_row(rows, b); });
      if (o_peephole_gemm_) {  // o's full peephole on c_t: dc_t += dz_o W_o (may return a new tensor)
        d_c_step_ = o_peephole_gemm_->addmm(d_c_step_, d_preacts_[t].narrow(1, layout_.block_o * H, H), d_c_step_);
        rows.d_c_step = d_c_step_.data_ptr<S>();
      }
      for_rows(B, GH, [&](int64_t b) { cell_row(rows, t, b); });
    }
    to_previous_step(t);
  }

  bool live(int64_t b, int64_t t) const { return !lengths_ || lengths_[b] > t; }

  // The pre-clip cell of step t: kept with clip or zoneout, else the carried state c_t itself.
  const S* c_pre_clip(int64_t t) const {
    return layout_.keeps_pre_clip_cell() ? c_pre_clip_.data_ptr<S>() + t * B * H
                                         : c_states_.data_ptr<S>() + (t + 1) * B * H;
  }

  // One step's buffers, each as the address of batch row 0.
  struct StepRows {
    const S* dh;          // the carried gradients, d_h_ and d_c_
    const S* dc;
    const S* grad_out;    // the output's gradient at step t, or null
    S* d_h_new;           // the parts split off them (d_h_new is d_cell_out without a projection)
    S* d_h_carry;
    S* d_c_new;
    S* d_c_carry;
    const S* gates;       // step t's saved activations
    const S* c_prev;      // c_{t-1}
    const S* c_unclipped; // c_t before the clip
    const S* d_cell_out;  // dL/d(o * act_out(c_t))
    S* d_c_step;          // dL/dc_t
    S* d_preacts;         // dZ_t
    S* d_c_prev;          // dL/dc_{t-1}
  };

  StepRows step_rows(int64_t t, const at::Tensor& d_h_new) {
    return {d_h_.data_ptr<S>(), d_c_.data_ptr<S>(), grad_out_ ? grad_out_ + t * B * P : nullptr,
            d_h_new.data_ptr<S>(), d_h_prev_.data_ptr<S>(), d_c_new_.data_ptr<S>(), d_c_carry_.data_ptr<S>(),
            gates_.data_ptr<S>() + t * B * GH, c_states_.data_ptr<S>() + t * B * H, c_pre_clip(t),
            d_cell_out_.data_ptr<S>(), d_c_step_.data_ptr<S>(), d_preacts_.data_ptr<S>() + t * B * GH,
            d_c_prev_.data_ptr<S>()};
  }

  // The carried gradient split between the new state and what zoneout or padding carries past the step.
  void split_row(const StepRows& rows, int64_t t, int64_t b) const {
    // No gradient for the output: read element 0 of a row of zeros P times.
    const S* grad_out = rows.grad_out ? rows.grad_out + b * P : zeros_.data_ptr<S>();
    split_carried_gradient<S, A>(P, H, zoneout_, live(b, t), rows.dh + b * P, rows.dc + b * H, grad_out,
                                 rows.grad_out ? 1 : 0, rows.d_h_new + b * P, rows.d_h_carry + b * P,
                                 rows.d_c_new + b * H, rows.d_c_carry + b * H);
  }

  // dz_o and dL/dc_t (o's full peephole on c_t is added after, by a GEMM over all rows).
  void output_gate_row(const StepRows& rows, int64_t b) const {
    const int64_t col_o = layout_.block_o * H;  // first column of o's block
    auto row = layout_.tanh_output ? output_gate_gradient<S, A, true> : output_gate_gradient<S, A, false>;
    row(H, clip_, rows.c_unclipped + b * H, rows.d_cell_out + b * H, rows.d_c_new + b * H,
        layout_.block_o >= 0 ? rows.gates + b * GH + col_o : ones_.data_ptr<S>(), diag_o_current_,
        layout_.block_o >= 0 ? rows.d_preacts + b * GH + col_o : sink_.data_ptr<S>() + b * 2 * H,
        rows.d_c_step + b * H);
  }

  // The other gates and dL/dc_{t-1}; padded rows pass the carried gradient through untouched. With
  // diagonal peepholes, this thread's sums of their gradients take the row's terms.
  void cell_row(const StepRows& rows, int64_t t, int64_t b) {
    S* dz = rows.d_preacts + b * GH;
    if (!live(b, t)) {
      std::fill(dz, dz + GH, S(0));
      std::copy(rows.d_c_carry + b * H, rows.d_c_carry + (b + 1) * H, rows.d_c_prev + b * H);
      return;
    }
    const S* ones = ones_.data_ptr<S>();
    const S* zeros = zeros_.data_ptr<S>();
    S* sink = sink_.data_ptr<S>() + b * 2 * H;
    const S* row_gates = rows.gates + b * GH;
    // First column of each gate's block (only used when the gate exists).
    const int64_t col_i = layout_.block_i * H, col_f = layout_.block_f * H, col_g = layout_.block_g * H,
                  col_o = layout_.block_o * H;
    S* dz_i = layout_.block_i >= 0 ? dz + col_i : sink;
    S* dz_f = layout_.block_f >= 0 ? dz + col_f : sink + H;
    const S* dz_o = layout_.block_o >= 0 ? dz + col_o : zeros;
    auto row = layout_.coupled
                   ? (layout_.tanh_input ? cell_gradient<S, A, true, true> : cell_gradient<S, A, true, false>)
                   : (layout_.tanh_input ? cell_gradient<S, A, false, true> : cell_gradient<S, A, false, false>);
    row(H, clip_, layout_.block_f >= 0 ? row_gates + col_f : ones, layout_.block_i >= 0 ? row_gates + col_i : ones,
        row_gates + col_g, rows.c_prev + b * H, rows.c_unclipped + b * H, rows.d_c_step + b * H,
        rows.d_c_carry + b * H, dz_o, diag_i_, diag_f_, diag_o_prev_, dz_i, dz_f, dz + col_g, rows.d_c_prev + b * H);
    if (diagonal_sums_.empty() && bias_sums_.empty()) return;
    const int64_t thread = at::get_thread_num();
    TORCH_INTERNAL_ASSERT(thread < threads_);
    if (!diagonal_sums_.empty())
      diagonal_peephole_terms<S, A>(H, clip_, layout_.o_reads_current, dz_i, dz_f, dz_o, rows.c_prev + b * H,
                                    rows.c_unclipped + b * H, diagonal_sums_.data() + thread * 3 * H);
    if (!bias_sums_.empty()) {  // dz is complete: the output gate's pass wrote o's block before this one
      A* __restrict__ sums = bias_sums_.data() + thread * GH;
      #pragma GCC ivdep
      for (int64_t j = 0; j < GH; ++j) sums[j] += A(dz[j]);
    }
  }

  // dc_{t-1} += the full peepholes reading it; dh_{t-1} = carried part + dZ_t W_hh. They become the
  // carried gradients of step t-1.
  void to_previous_step(int64_t t) {
    auto dz_t = d_preacts_[t];
    if (prev_peephole_gemm_)
      d_c_prev_ = prev_peephole_gemm_->addmm(d_c_prev_, prev_peephole_columns(prev_gates_, dz_t, H), d_c_prev_);
    d_h_prev_ = recurrent_gemm_->addmm(d_h_prev_, dz_t, d_h_prev_);  // (split_row wrote the carry there)
    std::swap(d_h_, d_h_prev_);
    std::swap(d_c_, d_c_prev_);
  }

  // One GEMM (or reduction) over all T*B rows each: (dW_ih, dW_hh, dW_ch, dW_hr). With the input
  // projection fused, the saved rows [x_t | h_{t-1}] give dW_ih and dW_hh as one GEMM (else no dW_ih).
  std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> weight_gradients() {
    auto d_preacts = d_preacts_.view({T * B, GH});
    auto dw_in_hh = at::mm(d_preacts.t(), h_states_.narrow(0, 0, T).reshape({T * B, I + P}));
    at::Tensor dw_ih = I > 0 ? dw_in_hh.narrow(1, 0, I).contiguous() : at::Tensor();
    at::Tensor dw_hh = I > 0 ? dw_in_hh.narrow(1, I, P).contiguous() : dw_in_hh;
    at::Tensor dw_hr, dw_ch;
    if (projected_) dw_hr = at::mm(d_h_new_all_.view({T * B, P}).t(), cell_outs_.view({T * B, H}));
    if (w_ch_.defined()) dw_ch = layout_.full_peepholes ? full_peephole_gradients(d_preacts) : diagonal_peephole_gradients();
    return {dw_ih, dw_hh, dw_ch, dw_hr};
  }

  // The bias gradient, the column sums of dZ: the threads' sums from the loop (cell_row), added up.
  at::Tensor bias_gradient() const {
    if (bias_sums_.empty()) return at::Tensor();
    auto db = at::empty({GH}, options_);
    add_up_threads<S, A>(bias_sums_.data(), GH, threads_, GH, db.data_ptr<S>());
    return db;
  }

  // Each full peephole matrix's gradient: one GEMM of its gate's dz columns with the cell it read.
  at::Tensor full_peephole_gradients(const at::Tensor& d_preacts) const {
    auto c_old = c_states_.narrow(0, 0, T).reshape({T * B, H});
    auto c_new = layout_.keeps_pre_clip_cell() ? c_pre_clip_.view({T * B, H})
                                               : c_states_.narrow(0, 1, T).reshape({T * B, H});
    if (layout_.keeps_pre_clip_cell() && layout_.cell_clip > 0)
      c_new = c_new.clamp(-layout_.cell_clip, layout_.cell_clip);
    auto dw_ch = at::zeros_like(w_ch_);
    auto gradient = [&](int64_t row, int64_t block, const at::Tensor& cell) {
      dw_ch[row].copy_(at::mm(d_preacts.narrow(1, block * H, H).t(), cell));
    };
    if (layout_.block_i >= 0 && layout_.peephole_i >= 0) gradient(layout_.peephole_i, layout_.block_i, c_old);
    if (layout_.block_f >= 0 && layout_.peephole_f >= 0) gradient(layout_.peephole_f, layout_.block_f, c_old);
    if (layout_.block_o >= 0 && layout_.peephole_o >= 0)
      gradient(layout_.peephole_o, layout_.block_o, layout_.o_reads_current ? c_new : c_old);
    return dw_ch;
  }

  // The diagonal peepholes' gradients: the threads' sums from the loop (cell_row), added up.
  at::Tensor diagonal_peephole_gradients() const {
    auto dw_ch = at::zeros_like(w_ch_);
    auto gradient = [&](int64_t row, int64_t gate) {
      add_up_threads<S, A>(diagonal_sums_.data() + gate * H, 3 * H, threads_, H, dw_ch[row].data_ptr<S>());
    };
    if (layout_.block_i >= 0 && layout_.peephole_i >= 0) gradient(layout_.peephole_i, 0);
    if (layout_.block_f >= 0 && layout_.peephole_f >= 0) gradient(layout_.peephole_f, 1);
    if (layout_.block_o >= 0 && layout_.peephole_o >= 0) gradient(layout_.peephole_o, 2);
    return dw_ch;
  }

  const CellLayout layout_;
  const at::Tensor h_states_, c_states_, gates_, c_pre_clip_, cell_outs_, w_ch_, w_hr_;
  const bool projected_;
  const int64_t T, B, GH, H, I, P;  // I: width of x_t in the saved rows [x_t | h_{t-1}], 0 when not fused
  const A zoneout_, clip_;
  const at::TensorOptions options_;
  const int64_t* const lengths_;
  const S* const grad_out_;
  // Without a projection and without o's full peephole on c_t (each a GEMM over all rows between the
  // phases), a row's split, output gate and cell phases run back to back in one pass.
  const bool rows_in_one_pass_;
  const int64_t threads_;
  std::vector<A> diagonal_sums_;  // (threads, 3 gates i f o, H), diagonal peepholes only
  std::vector<A> bias_sums_;      // (threads, GH), when the bias gradient is asked for

  at::Tensor d_preacts_;    // (T, B, GH) dL/d(pre-activations): the input projection's gradient, kept for the weights'
  at::Tensor d_h_new_all_;  // (T, B, P) dL/d(each step's projected h before zoneout), for dW_hr
  at::Tensor d_h_, d_c_;    // the gradient carried into the current step from the later ones
  at::Tensor d_c_carry_;    // its part that zoneout or padding passes straight to step t-1 (h's part is
                            // written into d_h_prev_, which the GEMM then adds dZ_t W_hh to in place)
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
                                      const at::Tensor& lengths, int64_t input_size, bool bias_grad) {
  std::vector<at::Tensor> results;
  AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, acts.scalar_type(), "fused_lstm_backward", [&] {
    results = SequenceBackward<scalar_t>(layout, grad_out, grad_hn, grad_cn, hs, cs, acts, cn, rs, w_hh, w_ch, w_hr,
                                         lengths, input_size, bias_grad)
                  .run();
  });
  return results;
}

}  // namespace fused_lstm
