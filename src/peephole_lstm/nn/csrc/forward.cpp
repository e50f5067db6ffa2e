// The sequence forward, with and without a backward to come: SequenceForward::step runs the phases of
// one step that docs/speed.md ("The C++ kernel") describes, with what each case keeps.
#include "buffer_cache.h"
#include "kernels.h"
#include "pointwise.h"
#include "step_gemm.h"

#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/core/grad_mode.h>

#include <algorithm>
#include <array>
#include <limits>
#include <optional>
#include <vector>

namespace fused_lstm {
namespace {

// gate = sigmoid(x + z + peephole), the peephole being a row `full` of the full-peephole GEMM or a
// diagonal row `diagonal` times the cell `cell` (a row of zeros without a peephole: GCC 12 vectorised a
// third, peephole-free loop here so badly that peephole="none" ran its forward 1.5x slower than
// "diagonal").
template <typename S, typename A>
void sigmoid_gate(int64_t H, S* __restrict__ gate, const S* __restrict__ x, const S* __restrict__ z,
                  const S* __restrict__ full, const S* __restrict__ diagonal, const S* __restrict__ cell) {
  if (full) {
    #pragma GCC ivdep
    for (int64_t j = 0; j < H; ++j) gate[j] = sigmoid(A(x[j]) + A(z[j]) + A(full[j]));
  } else {
    #pragma GCC ivdep
    for (int64_t j = 0; j < H; ++j) gate[j] = sigmoid(A(x[j]) + A(z[j]) + A(diagonal[j]) * A(cell[j]));
  }
}

// g = act_in(x + z).
template <typename S, typename A>
void cell_input(int64_t H, bool tanh_input, S* __restrict__ g, const S* __restrict__ x, const S* __restrict__ z) {
  if (tanh_input) {
    #pragma GCC ivdep
    for (int64_t j = 0; j < H; ++j) g[j] = tanh_act(A(x[j]) + A(z[j]));
  } else {
    #pragma GCC ivdep
    for (int64_t j = 0; j < H; ++j) g[j] = A(x[j]) + A(z[j]);
  }
}

// c = f * c_{t-1} + i * g (i = 1 - f when coupled), before the clip and clipped.
template <typename S, typename A>
void cell_update(int64_t H, bool coupled, A clip, const S* __restrict__ f, const S* __restrict__ i,
                 const S* __restrict__ g, const S* __restrict__ c_prev, S* __restrict__ c_pre_clip,
                 S* __restrict__ c_new) {
  #pragma GCC ivdep
  for (int64_t j = 0; j < H; ++j) {
    const A forget = f[j];
    const A input = coupled ? A(1) - forget : A(i[j]);
    const A c = forget * A(c_prev[j]) + input * A(g[j]);
    c_pre_clip[j] = c;
    const A lo = c < -clip ? -clip : c;
    c_new[j] = lo > clip ? clip : lo;
  }
}

// The cell's output o * act_out(c_t): h_t before the projection and zoneout.
template <typename S, typename A>
void cell_output(int64_t H, bool tanh_output, const S* __restrict__ o, const S* __restrict__ c,
                 S* __restrict__ out) {
  if (tanh_output) {
    #pragma GCC ivdep
    for (int64_t j = 0; j < H; ++j) out[j] = A(o[j]) * tanh_act(A(c[j]));
  } else {
    #pragma GCC ivdep
    for (int64_t j = 0; j < H; ++j) out[j] = A(o[j]) * A(c[j]);
  }
}

// The state carried to the next step and the step's output row: zoneout (eval) mixes the new state with
// the previous one; a padded row (past its length) keeps the previous state and outputs zeros.
template <typename S, typename A>
void carry_state(int64_t P, int64_t H, A zoneout, bool live, const S* __restrict__ h_new,
                 const S* __restrict__ h_prev, const S* __restrict__ c_new, const S* __restrict__ c_prev,
                 S* __restrict__ h_next, S* __restrict__ c_next, S* __restrict__ out) {
  if (live) {
    #pragma GCC ivdep
    for (int64_t j = 0; j < P; ++j) h_next[j] = A(h_new[j]) * (1 - zoneout) + A(h_prev[j]) * zoneout;
    #pragma GCC ivdep
    for (int64_t j = 0; j < H; ++j) c_next[j] = A(c_new[j]) * (1 - zoneout) + A(c_prev[j]) * zoneout;
    std::copy(h_next, h_next + P, out);
  } else {
    std::copy(h_prev, h_prev + P, h_next);
    std::copy(c_prev, c_prev + H, c_next);
    std::fill(out, out + P, S(0));
  }
}

// One step's buffers, each as the address of batch row 0 (row b starts b row widths further).
template <typename S>
struct StepRows {
  const S* input_proj;        // x_t's projection, GH per row; fused: the bias (or zeros) for every row
  int64_t input_proj_stride;  // GH, or 0 when fused
  const S* recurrent;         // (B, GH) h_{t-1} W_hh^T; fused: the whole pre-activation
  const S* prev_peepholes;    // (B, n_prev_peepholes*H) the full peepholes reading c_{t-1}, or null
  const S* c_prev;            // (B, H)
  S* gates;                   // (B, GH) the activations
  S* c_pre_clip;              // (B, H)
  S* c_new;                   // (B, H) clipped
  S* cell_out;                // (B, H) o * act_out(c_t)
};

// The carry's buffers, as the address of batch row 0: the step's new state (h before zoneout; its rows
// are h_row_stride apart in h_prev and h_next), the previous and next carried states, the output.
template <typename S>
struct CarryRows {
  const S* h_new;
  const S* h_prev;
  const S* c_new;
  const S* c_prev;
  S* h_next;
  S* c_next;
  S* out;
};

// The rows the gate loops read in place of absent gates and peepholes (see pointwise.h).
template <typename S>
struct StandIns {
  const S* ones;
  const S* zeros;
  const S* diagonal_peepholes;  // weight_ch's data when the peepholes are diagonal, else null
  const S* diagonal(int64_t row, int64_t H) const {
    return (row >= 0 && diagonal_peepholes) ? diagonal_peepholes + row * H : zeros;
  }
};

// The gate pass for batch row b: i, f, g, the cell update and clip, and o with the cell output unless
// o's full peephole reads c_t (that needs the GEMM on all rows' c_t first).
template <typename S, typename A>
void gate_pass_row(const CellLayout& layout, const StepRows<S>& step, const StandIns<S>& stand_in, int64_t H,
                   int64_t GH, A clip, bool with_output_gate, int64_t b) {
  const S* x = step.input_proj + b * step.input_proj_stride;
  const S* z = step.recurrent + b * GH;
  const S* c_prev = step.c_prev + b * H;
  const S* full = step.prev_peepholes ? step.prev_peepholes + b * layout.n_prev_peepholes * H : nullptr;
  S* gates = step.gates + b * GH;
  auto full_peephole = [&](int64_t slot) { return slot >= 0 ? full + slot * H : nullptr; };
  // First column of each gate's block (only used when the gate exists).
  const int64_t col_i = layout.block_i * H, col_f = layout.block_f * H, col_g = layout.block_g * H,
                col_o = layout.block_o * H;
  if (layout.block_i >= 0)
    sigmoid_gate<S, A>(H, gates + col_i, x + col_i, z + col_i, full_peephole(layout.prev_slot_i),
                       stand_in.diagonal(layout.peephole_i, H), c_prev);
  if (layout.block_f >= 0)
    sigmoid_gate<S, A>(H, gates + col_f, x + col_f, z + col_f, full_peephole(layout.prev_slot_f),
                       stand_in.diagonal(layout.peephole_f, H), c_prev);
  cell_input<S, A>(H, layout.tanh_input, gates + col_g, x + col_g, z + col_g);
  S* c_new = step.c_new + b * H;
  cell_update<S, A>(H, layout.coupled, clip, layout.block_f >= 0 ? gates + col_f : stand_in.ones,
                    layout.block_i >= 0 ? gates + col_i : stand_in.ones, gates + col_g, c_prev,
                    step.c_pre_clip + b * H, c_new);
  if (!with_output_gate) return;
  if (layout.block_o >= 0)
    sigmoid_gate<S, A>(H, gates + col_o, x + col_o, z + col_o, full_peephole(layout.prev_slot_o),
                       stand_in.diagonal(layout.peephole_o, H), layout.o_reads_current ? c_new : c_prev);
  cell_output<S, A>(H, layout.tanh_output, layout.block_o >= 0 ? gates + col_o : stand_in.ones, c_new,
                    step.cell_out + b * H);
}

// The recurrent GEMM's weight as column pieces: [W_ih | W_hh] when the input projection is fused (x given
// in place of xz), else W_hh.
std::vector<at::Tensor> recurrent_weight_pieces(const at::Tensor& x, const at::Tensor& w_ih, const at::Tensor& w_hh) {
  if (x.defined()) return {w_ih, w_hh};
  return {w_hh};
}

template <typename S>
class SequenceForward {
  using A = at::opmath_type<S>;

 public:
  SequenceForward(const CellLayout& layout, const at::Tensor& xz, const at::Tensor& h0, const at::Tensor& c0,
                  const at::Tensor& w_hh, const at::Tensor& w_ch, const at::Tensor& w_hr, const at::Tensor& lengths,
                  bool for_backward, const at::Tensor& x, const at::Tensor& w_ih, const at::Tensor& bias,
                  const at::Tensor& out = at::Tensor(), const StepGemm* shared_recurrent_gemm = nullptr)
      : layout_(layout),
        xz_(xz),
        h0_(h0),
        c0_(c0),
        w_hr_(w_hr),
        x_(x),
        bias_(bias),
        for_backward_(for_backward),
        input_fused_(x.defined()),
        projected_(w_hr.defined()),
        T(input_fused_ ? x.size(0) : xz.size(0)),
        B(h0.size(0)),
        GH(w_hh.size(0)),
        H(c0.size(1)),
        P(h0.size(1)),
        I(input_fused_ ? x.size(2) : 0),
        zoneout_(static_cast<A>(layout.zoneout)),
        clip_(layout.cell_clip > 0 ? static_cast<A>(layout.cell_clip) : std::numeric_limits<A>::infinity()),
        options_(h0.options()),
        slot_(for_backward ? 1 : 0),
        h_row_stride_(input_fused_ ? I + P : P),
        o_in_gate_pass_(!layout.full_o_reads_current()),
        lengths_(lengths.defined() ? lengths.data_ptr<int64_t>() : nullptr),
        shared_recurrent_gemm_(shared_recurrent_gemm) {
    if (for_backward_)
      allocate_saved_steps();
    else
      allocate_rolling_steps();
    // Its own storage (the caller may modify it in place), or the caller's view of rows of a bigger one.
    out_ = out.defined() ? out : at::empty({T, B, P}, options_);
    allocate_step_buffers(w_hh, w_ch, w_ih);
  }

  std::vector<at::Tensor> run() {
    {
      const at::AutoDispatchBelowADInplaceOrView below_autograd;  // (the steps' views: SequenceBackward::run)
      for (int64_t t = 0; t < T; ++t) step(t);
    }
    if (!for_backward_) return {out_, h_state(T).clone(), c_state(T).clone()};  // fresh: h0/c0 when T = 0
    return {out_, h_states_, c_states_, gates_, c_pre_clip_, cell_outs_};
  }

 private:
  // Every step's gates and states, for the backward (which frees them). With the input projection fused,
  // row t of the hidden states is the step GEMM's left operand [x_t | h_{t-1}] (x_T's place is unused),
  // so that the backward gets dW_ih and dW_hh from one GEMM dZ^T [X | H_prev].
  void allocate_saved_steps() {
    h_states_ = workspace({T + 1, B, I + P}, options_);
    if (input_fused_) h_states_.narrow(0, 0, T).narrow(2, 0, I).copy_(x_);
    h_state(0).copy_(h0_);
    c_states_ = workspace({T + 1, B, H}, options_);
    gates_ = workspace({T, B, GH}, options_);
    c_pre_clip_ = layout_.keeps_pre_clip_cell() ? workspace({T, B, H}, options_) : at::Tensor();
    cell_outs_ = projected_ ? workspace({T, B, H}, options_) : at::Tensor();
    c_states_[0].copy_(c0_);
  }

  // Without a backward only what the next step reads: two state buffers used in turn and one step's
  // gates, so the memory traffic per step is the step's own, independent of T. With the input projection
  // fused the hidden state lives in the step GEMM's left operand [x_t | h_{t-1}].
  void allocate_rolling_steps() {
    h_states_ = at::empty({2, B, I + P}, options_);
    if (input_fused_) h_states_[0].narrow(1, I, P).copy_(h0_);
    c_states_ = at::empty({2, B, H}, options_);
    // Their views, made once: each view is a dispatcher call, and a step took five.
    for (int64_t k = 0; k < 2; ++k) {
      rolling_rows_[k] = h_states_[k];
      rolling_h_[k] = input_fused_ ? rolling_rows_[k].narrow(1, I, P) : rolling_rows_[k];
      rolling_c_[k] = c_states_[k];
    }
    gates_ = at::empty({1, B, GH}, options_);
    c_pre_clip_ = layout_.keeps_pre_clip_cell() ? at::empty({1, B, H}, options_) : at::Tensor();
    cell_outs_ = projected_ ? at::empty({1, B, H}, options_) : at::Tensor();
  }

  void allocate_step_buffers(const at::Tensor& w_hh, const at::Tensor& w_ch, const at::Tensor& w_ih) {
    // Fused projection: the weight is [W_ih | W_hh], built once in the layout its GEMM reads from the two
    // pieces (no concatenation first). Row blocks of one call share one.
    if (shared_recurrent_gemm_) {
      recurrent_gemm_ = shared_recurrent_gemm_;
    } else {
      own_recurrent_gemm_.emplace(recurrent_weight_pieces(x_, w_ih, w_hh), B, T);
      recurrent_gemm_ = &*own_recurrent_gemm_;
    }
    recurrent_out_ = at::empty({B, GH}, options_);
    // The gate pass adds x's projection row to the GEMM's; fused, that row is the bias (or zeros) for
    // every b: added there, not written into the GEMM's output before each step.
    fused_input_row_ = !input_fused_ ? at::Tensor() : bias_.defined() ? bias_ : at::zeros({GH}, options_);
    c_new_ = at::empty({B, H}, options_);
    c_pre_clip_scratch_ = layout_.keeps_pre_clip_cell() ? at::Tensor() : at::empty({B, H}, options_);
    cell_out_scratch_ = at::empty({B, H}, options_);
    h_new_ = projected_ ? at::empty({B, P}, options_) : cell_out_scratch_;
    ones_ = at::ones({H}, options_);
    zeros_ = at::zeros({H}, options_);  // the "peephole weights" of gates without one
    // Full peepholes: one GEMM for the gates reading c_{t-1}, one for o reading c_t.
    if (layout_.full_peepholes && layout_.n_prev_peepholes > 0) {
      prev_peephole_gemm_.emplace(stacked_prev_peepholes(layout_, w_ch), B, T);
      prev_peephole_out_ = at::empty({B, layout_.n_prev_peepholes * H}, options_);
    }
    if (layout_.full_o_reads_current()) {
      o_peephole_gemm_.emplace(w_ch[layout_.peephole_o], B, T);
      o_peephole_out_ = at::empty({B, H}, options_);
    }
    stand_in_ = {ones_.data_ptr<S>(), zeros_.data_ptr<S>(),
                 (w_ch.defined() && !layout_.full_peepholes) ? w_ch.data_ptr<S>() : nullptr};
  }

  // State s (0..T); state 0 of a run without backward is h0/c0 themselves (only read).
  at::Tensor h_state(int64_t s) const {
    if (!for_backward_) return s == 0 && !input_fused_ ? h0_ : rolling_h_[s % 2];
    return input_fused_ ? h_states_[s].narrow(1, I, P) : h_states_[s];
  }
  at::Tensor c_state(int64_t s) const { return for_backward_ ? c_states_[s] : (s == 0 ? c0_ : rolling_c_[s % 2]); }
  // The same states' first rows, for the passes: a tensor view is a dispatcher call, and the seven a step
  // took with a backward to come were 17% of a small training step (B=32, H=16: 0.935 -> 0.775 ms).
  S* h_data(int64_t s) const {
    if (!for_backward_ && s == 0 && !input_fused_) return h0_.data_ptr<S>();
    return h_states_.data_ptr<S>() + (for_backward_ ? s : s % 2) * B * (I + P) + I;  // I = 0 when not fused
  }
  S* c_data(int64_t s) const {
    if (!for_backward_ && s == 0) return c0_.data_ptr<S>();
    return c_states_.data_ptr<S>() + (for_backward_ ? s : s % 2) * B * H;
  }

  void step(int64_t t) {
    const at::Tensor recurrent = recurrent_gemm(t);
    const at::Tensor prev_peepholes =
        prev_peephole_gemm_ ? prev_peephole_gemm_->mm(c_state(t), prev_peephole_out_) : at::Tensor();
    const StepRows<S> rows = step_rows(t, recurrent, prev_peepholes);
    const CarryRows<S> carried = carry_rows(t);
    // Without o's full peephole on c_t and without a projection a row's new state is complete after its
    // gate pass, so the carry runs on the row while it is in L1, in the same pass over the threads (a
    // second pass cost about 10 us a step at B=64, H=128).
    const bool carry_in_gate_pass = o_in_gate_pass_ && !projected_;
    for_rows(B, GH, [&](int64_t b) {
      gate_pass_row<S, A>(layout_, rows, stand_in_, H, GH, clip_, o_in_gate_pass_, b);
      if (carry_in_gate_pass) carry_row(carried, t, b);
    });
    if (carry_in_gate_pass) return;
    if (!o_in_gate_pass_) output_gate_on_current_cell(rows);
    if (projected_) at::mm_out(h_new_, cell_outs_[t * slot_], w_hr_.t());
    for_rows(B, P + H, [&](int64_t b) { carry_row(carried, t, b); });
  }

  // h_{t-1} W_hh^T, or with the input projection fused [x_t | h_{t-1}] [W_ih | W_hh]^T (the gate pass adds
  // the bias).
  at::Tensor recurrent_gemm(int64_t t) {
    if (!input_fused_) return recurrent_gemm_->mm(h_state(t), recurrent_out_);
    auto operand = for_backward_ ? h_states_[t] : rolling_rows_[t % 2];  // [x_t | h_{t-1}]
    if (!for_backward_) {  // (kept for a backward, all steps' x were copied at the start)
      // Row by row: x is a block of rows of the caller's x, and a tensor copy_ of these few elements
      // costs more in dispatch than in copying.
      const S* x_t = x_.data_ptr<S>() + t * x_.stride(0);
      S* rows = operand.data_ptr<S>();
      for (int64_t b = 0; b < B; ++b) std::copy(x_t + b * x_.stride(1), x_t + b * x_.stride(1) + I, rows + b * (I + P));
    }
    return recurrent_gemm_->mm(operand, recurrent_out_);
  }

  StepRows<S> step_rows(int64_t t, const at::Tensor& recurrent, const at::Tensor& prev_peepholes) const {
    const int64_t row = t * slot_;  // step t's row of the saved gates/cells; 0 without a backward
    return {input_fused_ ? fused_input_row_.data_ptr<S>() : xz_.data_ptr<S>() + t * B * GH,
            input_fused_ ? 0 : GH,
            recurrent.data_ptr<S>(),
            prev_peepholes.defined() ? prev_peepholes.data_ptr<S>() : nullptr,
            c_data(t),
            gates_.data_ptr<S>() + row * B * GH,
            layout_.keeps_pre_clip_cell() ? c_pre_clip_.data_ptr<S>() + row * B * H : c_pre_clip_scratch_.data_ptr<S>(),
            c_new_.data_ptr<S>(),
            projected_ ? cell_outs_.data_ptr<S>() + row * B * H : cell_out_scratch_.data_ptr<S>()};
  }

  // o's full peephole reads c_t: one GEMM on all rows' new cell, then o and the cell output.
  void output_gate_on_current_cell(const StepRows<S>& rows) {
    const auto peephole = o_peephole_gemm_->mm(c_new_, o_peephole_out_);
    const S* peephole_rows = peephole.data_ptr<S>();
    const int64_t col_o = layout_.block_o * H;
    for_rows(B, H, [&](int64_t b) {
      S* gate = rows.gates + b * GH + col_o;
      sigmoid_gate<S, A>(H, gate, rows.input_proj + b * rows.input_proj_stride + col_o, rows.recurrent + b * GH + col_o,
                         peephole_rows + b * H, nullptr, nullptr);
      cell_output<S, A>(H, layout_.tanh_output, gate, rows.c_new + b * H, rows.cell_out + b * H);
    });
  }

  CarryRows<S> carry_rows(int64_t t) const {
    return {h_new_.data_ptr<S>(), h_data(t), c_new_.data_ptr<S>(), c_data(t), h_data(t + 1), c_data(t + 1),
            out_.data_ptr<S>() + t * out_.stride(0)};
  }

  void carry_row(const CarryRows<S>& rows, int64_t t, int64_t b) const {
    const bool live = !lengths_ || lengths_[b] > t;
    carry_state<S, A>(P, H, zoneout_, live, rows.h_new + b * P, rows.h_prev + b * h_row_stride_, rows.c_new + b * H,
                      rows.c_prev + b * H, rows.h_next + b * h_row_stride_, rows.c_next + b * H, rows.out + b * P);
  }

  const CellLayout layout_;
  const at::Tensor xz_, h0_, c0_, w_hr_, x_, bias_;
  const bool for_backward_, input_fused_, projected_;
  const int64_t T, B, GH, H, P, I;
  const A zoneout_, clip_;
  const at::TensorOptions options_;
  const int64_t slot_;          // 1: step t's gates and cells are kept at row t; 0: one row reused
  const int64_t h_row_stride_;  // of the hidden state: I + P where it shares rows with x_t
  const bool o_in_gate_pass_;
  const int64_t* const lengths_;

  // What the backward reads (all steps), or the rolling buffers of a run without one.
  at::Tensor h_states_, c_states_, gates_, c_pre_clip_, cell_outs_;
  std::array<at::Tensor, 2> rolling_rows_, rolling_h_, rolling_c_;  // views of the rolling h_states_, c_states_
  at::Tensor out_;
  const StepGemm* const shared_recurrent_gemm_;
  std::optional<StepGemm> own_recurrent_gemm_, prev_peephole_gemm_, o_peephole_gemm_;
  const StepGemm* recurrent_gemm_ = nullptr;  // own_recurrent_gemm_ or the shared one
  at::Tensor recurrent_out_, prev_peephole_out_, o_peephole_out_;
  at::Tensor fused_input_row_, c_new_, c_pre_clip_scratch_, cell_out_scratch_, h_new_, ones_, zeros_;
  StandIns<S> stand_in_{};
};

}  // namespace

std::vector<at::Tensor> lstm_forward(const CellLayout& layout, const at::Tensor& xz, const at::Tensor& h0,
                                     const at::Tensor& c0, const at::Tensor& w_hh, const at::Tensor& w_ch,
                                     const at::Tensor& w_hr, const at::Tensor& lengths, bool for_backward,
                                     const at::Tensor& x, const at::Tensor& w_ih, const at::Tensor& bias) {
  std::vector<at::Tensor> results;
  AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, h0.scalar_type(), "fused_lstm_forward", [&] {
    // Without a backward, batch rows never meet: each thread runs the whole sequence on its own block of
    // rows, with no synchronisation per step (splitting every step's GEMM and pointwise pass across the
    // threads instead costs a few fork/joins a step: at B=64, I=32, H=128 on two threads, 1.26-1.33x
    // nn.LSTM's time that way against 1.07-1.17x in blocks, scripts/benchmark.py). Only for steps of up to 2^23 multiply-adds (B=64, H=128: 5.2M), whose weight stays in each
    // core's cache; at B=64, I=64, H=512 (75M) every thread streaming the whole weight was 10% slower than
    // all threads sharing each step. Blocks of at least 32 rows: at B=32, H=16 or B=16, H=128 two blocks
    // were slower than one shared step.
    const int64_t B = h0.size(0), K = x.defined() ? x.size(2) + h0.size(1) : h0.size(1);
    const bool small_steps = B * K * w_hh.size(0) <= (int64_t{1} << 23);
    const int64_t blocks = for_backward || !small_steps || at::in_parallel_region()
                               ? 1
                               : std::min<int64_t>(at::get_num_threads(), B / 32);
    if (blocks <= 1) {
      results = SequenceForward<scalar_t>(layout, xz, h0, c0, w_hh, w_ch, w_hr, lengths, for_backward, x, w_ih, bias)
                    .run();
      return;
    }
    std::vector<std::vector<at::Tensor>> parts(blocks);
    const int64_t T = x.defined() ? x.size(0) : xz.size(0);
    const StepGemm recurrent_gemm(recurrent_weight_pieces(x, w_ih, w_hh), B / blocks, T);
    // Each block writes its rows of one output (a concatenation after would copy all of it).
    const at::Tensor out = at::empty({T, B, h0.size(1)}, h0.options());
    at::parallel_for(0, blocks, 1, [&](int64_t begin, int64_t end) {
      // Grad mode is per thread and the pool's threads do not inherit the caller's no_grad: without this a
      // block's set-up (its GEMMs' weights cut from the parameters) would record autograd graphs. (Its
      // steps run below autograd anyway: SequenceForward::run.)
      const at::AutoGradMode no_grad(false);
      for (int64_t k = begin; k < end; ++k) {
        const int64_t b0 = k * B / blocks, rows = (k + 1) * B / blocks - b0;
        auto block = [&](const at::Tensor& t, int64_t dim) { return t.defined() ? t.narrow(dim, b0, rows) : t; };
        // The kernel addresses xz's steps by B * GH: its block must be contiguous (x is read through views).
        const at::Tensor xz_block = xz.defined() && !x.defined() ? block(xz, 1).contiguous() : xz;
        parts[k] = SequenceForward<scalar_t>(layout, xz_block, block(h0, 0), block(c0, 0), w_hh, w_ch, w_hr,
                                             block(lengths, 0), false, block(x, 1), w_ih, bias, block(out, 1),
                                             &recurrent_gemm)
                       .run();
      }
    });
    std::vector<at::Tensor> hs, cs;
    for (const auto& part : parts) {
      hs.push_back(part[1]);
      cs.push_back(part[2]);
    }
    results = {out, at::cat(hs, 0), at::cat(cs, 0)};
  });
  return results;
}

}  // namespace fused_lstm
