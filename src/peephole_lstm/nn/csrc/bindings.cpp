// The Python module peephole_lstm.nn._fused_cpu: argument checks and conversions, then the kernels.
// What the kernel computes, its tensors' layout and what it saves: docs/speed.md, "The C++ kernel".
#include "buffer_cache.h"
#include "cell_layout.h"
#include "kernels.h"
#include "step_gemm.h"

#include <torch/extension.h>

#include <optional>
#include <vector>

namespace {

using fused_lstm::CellLayout;

// The kernels read raw memory row by row: optional arguments as contiguous tensors, undefined when None.
at::Tensor contiguous_or_undefined(const std::optional<at::Tensor>& t) {
  return t.has_value() ? t->contiguous() : at::Tensor();
}

std::vector<at::Tensor> forward(const std::optional<at::Tensor>& xz, const at::Tensor& h0, const at::Tensor& c0,
                                const at::Tensor& w_hh, const std::optional<at::Tensor>& w_ch,
                                const std::optional<at::Tensor>& w_hr, const std::optional<at::Tensor>& lengths,
                                const std::vector<int64_t>& idx, const std::vector<bool>& flags, double clip,
                                double zoneout, bool needs_grad, const std::optional<at::Tensor>& x,
                                const std::optional<at::Tensor>& w_ih, const std::optional<at::Tensor>& bias) {
  TORCH_CHECK(h0.device().is_cpu(), "fused_lstm extension: CPU tensors only");
  TORCH_CHECK(xz.has_value() != (x.has_value() && w_ih.has_value()),
              "fused_lstm: pass either xz or x and w_ih (the input projection fused into the steps)");
  const CellLayout layout = fused_lstm::make_layout(idx, flags, clip, zoneout);
  return fused_lstm::lstm_forward(layout, contiguous_or_undefined(xz), h0.contiguous(), c0.contiguous(),
                                  w_hh.contiguous(), contiguous_or_undefined(w_ch), contiguous_or_undefined(w_hr),
                                  contiguous_or_undefined(lengths), needs_grad, contiguous_or_undefined(x),
                                  contiguous_or_undefined(w_ih), contiguous_or_undefined(bias));
}

std::vector<at::Tensor> backward(const std::optional<at::Tensor>& grad_out, const std::optional<at::Tensor>& grad_hn,
                                 const std::optional<at::Tensor>& grad_cn, const at::Tensor& hs, const at::Tensor& cs,
                                 const at::Tensor& acts, const std::optional<at::Tensor>& cn,
                                 const std::optional<at::Tensor>& rs, const at::Tensor& w_hh,
                                 const std::optional<at::Tensor>& w_ch, const std::optional<at::Tensor>& w_hr,
                                 const std::optional<at::Tensor>& lengths, const std::vector<int64_t>& idx,
                                 const std::vector<bool>& flags, double clip, double zoneout, int64_t input_size,
                                 bool bias_grad) {
  const CellLayout layout = fused_lstm::make_layout(idx, flags, clip, zoneout);
  // hs, cs and acts are the forward's own buffers, contiguous as it made them.
  return fused_lstm::lstm_backward(layout, contiguous_or_undefined(grad_out), contiguous_or_undefined(grad_hn),
                                   contiguous_or_undefined(grad_cn), hs, cs, acts, contiguous_or_undefined(cn),
                                   contiguous_or_undefined(rs), w_hh.contiguous(), contiguous_or_undefined(w_ch),
                                   contiguous_or_undefined(w_hr), contiguous_or_undefined(lengths), input_size,
                                   bias_grad);
}

int64_t empty_cache() { return static_cast<int64_t>(fused_lstm::release_cached_buffers()); }
int64_t cached_bytes() { return static_cast<int64_t>(fused_lstm::cached_buffer_bytes()); }

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("empty_cache", &empty_cache, "free the big buffers kept for reuse; returns how many bytes");
  m.def("cached_bytes", &cached_bytes, "bytes of big buffers kept for reuse (not in use)");
  m.def("set_tiled_max_macs", &fused_lstm::set_tiled_max_macs,
        "up to how many multiply-adds a per-step GEMM runs on the kernel's own tiled GEMM; returns the previous value");
  m.def("set_brgemm_max_depth", &fused_lstm::set_brgemm_max_depth,
        "up to which depth K a float32 per-step GEMM runs on oneDNN's brgemm; returns the previous value");
  m.def("set_onednn_min_macs", &fused_lstm::set_onednn_min_macs,
        "from how many multiply-adds (B*4H*P) a float32 recurrent GEMM runs on oneDNN; returns the previous value");
  m.def("forward", &forward,
        "peephole LSTM sequence forward (CPU): (out, hs, cs, acts, cn, rs) for the backward when needs_grad, "
        "else (out, h_T, c_T) without keeping any step's gates or states; x, w_ih and "
        "bias may replace xz (None) to fuse the input projection into the steps (then hs holds the rows [x_t | h_{t-1}])",
        py::arg("xz"), py::arg("h0"), py::arg("c0"), py::arg("w_hh"), py::arg("w_ch"), py::arg("w_hr"),
        py::arg("lengths"), py::arg("idx"), py::arg("flags"), py::arg("clip"), py::arg("zoneout"),
        py::arg("needs_grad") = true, py::arg("x") = py::none(), py::arg("w_ih") = py::none(),
        py::arg("bias") = py::none());
  m.def("backward", &backward,
        "peephole LSTM sequence backward (CPU): (d xz, d h0, d c0, d w_hh, d w_ch, d w_hr, d w_ih, d bias); "
        "d w_ih when the forward fused the input projection (input_size: its x's width), d bias when bias_grad",
        py::arg("grad_out"), py::arg("grad_hn"), py::arg("grad_cn"), py::arg("hs"), py::arg("cs"), py::arg("acts"),
        py::arg("cn"), py::arg("rs"), py::arg("w_hh"), py::arg("w_ch"), py::arg("w_hr"), py::arg("lengths"),
        py::arg("idx"), py::arg("flags"), py::arg("clip"), py::arg("zoneout"), py::arg("input_size") = 0,
        py::arg("bias_grad") = false);
}
