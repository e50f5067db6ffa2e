// Which gates and peepholes one LSTM variant has, decoded once per call from the Python side's
// (idx, flags, clip, zoneout) (peephole_lstm.nn.fused.config). Layout: docs/speed.md, "The C++ kernel".
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <utility>
#include <vector>

namespace fused_lstm {

struct CellLayout {
  // Block of each gate in the G*H stacked columns of W_hh, the input projection and the saved gates;
  // -1 when the variant drops the gate (NIG, NFG, NOG, CIFG's input gate).
  int64_t block_i, block_f, block_g, block_o;
  // Row of weight_ch holding the gate's peephole, -1 when the gate has none.
  int64_t peephole_i, peephole_f, peephole_o;
  bool full_peepholes;   // peephole="full": weight_ch is (rows, H, H), else diagonal (rows, H)
  bool o_reads_current;  // output_peephole="current": o peeks at c_t, else at c_{t-1}
  bool coupled;          // CIFG: i = 1 - f
  bool tanh_input;       // input_activation="tanh", else identity
  bool tanh_output;      // output_activation="tanh", else identity
  double cell_clip;      // 0: no clipping
  double zoneout;        // eval-mode mixing weight of the previous state; 0: none
  // Full peepholes that read c_{t-1} (i, f, and o with output_peephole="previous") run as one GEMM on
  // their stacked matrices: each one's slot in it, -1 when not part of it.
  int64_t prev_slot_i = -1, prev_slot_f = -1, prev_slot_o = -1, n_prev_peepholes = 0;

  // o's full peephole reads c_t, which exists only after the cell update: its GEMM runs between the
  // gate pass and o's own pass.
  bool full_o_reads_current() const { return full_peepholes && block_o >= 0 && peephole_o >= 0 && o_reads_current; }
  // The cell before clipping and zoneout differs from the carried state only with either of them; the
  // backward reads it, so only then is it kept (fused.keeps_pre_clip_cell on the Python side).
  bool keeps_pre_clip_cell() const { return cell_clip > 0 || zoneout > 0; }
};

CellLayout make_layout(const std::vector<int64_t>& idx, const std::vector<bool>& flags, double cell_clip,
                       double zoneout);

// (gate block, weight_ch row) of the gates whose full peepholes read c_{t-1}, in their slot order.
std::vector<std::pair<int64_t, int64_t>> prev_peephole_gates(const CellLayout& layout);

// Their rows of weight_ch (rows, H, H), stacked to (n_prev_peepholes*H, H).
at::Tensor stacked_prev_peepholes(const CellLayout& layout, const at::Tensor& weight_ch);

// The columns of dZ_t (B, G*H) that multiply those stacked rows in the backward, in the same order.
at::Tensor prev_peephole_columns(const std::vector<std::pair<int64_t, int64_t>>& gates, const at::Tensor& dz_t,
                                 int64_t hidden);

}  // namespace fused_lstm
