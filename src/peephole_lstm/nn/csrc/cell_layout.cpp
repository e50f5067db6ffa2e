#include "cell_layout.h"

#include <ATen/ATen.h>

namespace fused_lstm {

CellLayout make_layout(const std::vector<int64_t>& idx, const std::vector<bool>& flags, double cell_clip,
                       double zoneout) {
  TORCH_CHECK(idx.size() == 7 && flags.size() == 5, "fused_lstm: bad layout");
  CellLayout layout{idx[0],   idx[1],   idx[2],   idx[3],   idx[4],    idx[5], idx[6],
                    flags[0], flags[1], flags[2], flags[3], flags[4], cell_clip, zoneout};
  if (layout.full_peepholes) {
    if (layout.block_i >= 0 && layout.peephole_i >= 0) layout.prev_slot_i = layout.n_prev_peepholes++;
    if (layout.block_f >= 0 && layout.peephole_f >= 0) layout.prev_slot_f = layout.n_prev_peepholes++;
    if (layout.block_o >= 0 && layout.peephole_o >= 0 && !layout.o_reads_current)
      layout.prev_slot_o = layout.n_prev_peepholes++;
  }
  return layout;
}

std::vector<std::pair<int64_t, int64_t>> prev_peephole_gates(const CellLayout& layout) {
  std::vector<std::pair<int64_t, int64_t>> gates;
  if (layout.prev_slot_i >= 0) gates.emplace_back(layout.block_i, layout.peephole_i);
  if (layout.prev_slot_f >= 0) gates.emplace_back(layout.block_f, layout.peephole_f);
  if (layout.prev_slot_o >= 0) gates.emplace_back(layout.block_o, layout.peephole_o);
  return gates;
}

at::Tensor stacked_prev_peepholes(const CellLayout& layout, const at::Tensor& weight_ch) {
  std::vector<at::Tensor> rows;
  for (const auto& [block, row] : prev_peephole_gates(layout)) rows.push_back(weight_ch[row]);
  return at::cat(rows, 0).contiguous();
}

at::Tensor prev_peephole_columns(const std::vector<std::pair<int64_t, int64_t>>& gates, const at::Tensor& dz_t,
                                 int64_t hidden) {
  // A view when the gate blocks are adjacent (i, f of the usual i f g o layout): no copy per step.
  const int64_t first = gates[0].first, n = static_cast<int64_t>(gates.size());
  bool adjacent = true;
  for (int64_t j = 1; j < n; ++j) adjacent = adjacent && gates[j].first == first + j;
  if (adjacent) return dz_t.narrow(1, first * hidden, n * hidden);
  std::vector<at::Tensor> columns;
  for (const auto& [block, row] : gates) columns.push_back(dz_t.narrow(1, block * hidden, hidden));
  return at::cat(columns, 1);
}

}  // namespace fused_lstm
