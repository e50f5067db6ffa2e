#include "step_gemm.h"

#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/native/CPUBlas.h>

#include <algorithm>
#include <optional>

namespace fused_lstm {
namespace {

// In float32 from about this many multiply-adds on, oneDNN's matmul on a weight reordered once per
// sequence (the mkldnn ops torch's inductor uses for frozen linears) beats at::mm (MKL): 0.64 vs
// 1.0 ms for 64x512 @ 512x2048 on 2 threads of this project's AMD CPU; below it, its fixed
// per-call cost loses (equal at 64x128 @ 128x512).
int64_t onednn_min_macs = int64_t{1} << 23;
// Up to this many multiply-adds a per-step GEMM runs on the register-tiled GEMM below: no per-call
// setup (about 3 us for MKL, more for oneDNN, half a whole step at the small shape), and for these
// thin matrices (B rows) it beat MKL's sgemm on 2 threads of this project's AMD CPU (16x128 @ 128x512:
// 15.6 vs 22.8 us; 64x128 @ 128x512: 50 vs 69 us). Only in AVX-512 builds (-march=native here): built
// for AVX2 (-march=haswell) the same code ran the medium shape 4.7x slower than with MKL, so other
// builds leave every GEMM to the libraries.
#if defined(__AVX512F__)
int64_t tiled_max_macs = int64_t{1} << 23;
#else
int64_t tiled_max_macs = -1;
#endif
// Float32 GEMMs of depth (K) up to this run on oneDNN's brgemm micro-kernel (JIT-compiled for the CPU,
// the kernel family oneDNN's own LSTM uses; torch exports it as at::native::cpublas::brgemm, falling
// back to MKL where its build lacks it), whatever their size. On 2 threads of this project's AMD CPU
// (1 MB L2 a core), steps of (rows x K) @ (K x N) from W^T in panels (below) against oneDNN's matmul:
// 64x160 @ 160x512 at 222 vs 149 GFLOP/s, 64x576 @ 576x2048 at 222 vs 198, 8x576 @ 576x2048 at 182 vs
// 111, 64x2048 @ 2048x512 at 227 vs 215; deeper, a K x 64 panel (256 bytes per K) and the rows of `a`
// no longer share the L2 and oneDNN's matmul, which also blocks K, wins: 2560x2048 at 189 vs 198,
// 3072x1024 at 174 vs 209.
int64_t brgemm_max_depth = 2048;

// brgemm's weight: W^T cut into panels of this many columns, each K x 64 contiguous (the last one narrower
// when N is not a multiple), so a call's whole B operand is one dense block that the micro-kernel streams
// and the L2 cache keeps. 64 is four AVX-512 vectors, the width oneDNN's own LSTM blocks its weights by.
// On 2 threads of this project's AMD CPU, 200 steps of 64x576 @ 576x2048 took 136 ms from panels against
// 143-145 ms from W^T contiguous (the same micro-kernel) and 150 ms on oneDNN's matmul.
constexpr int64_t panel_cols = 64;

// W (N, K), given as its column pieces side by side, -> its panels: N * K numbers laid out panel after
// panel. A plain loop: the same transposing copy through at::Tensor::contiguous, after concatenating
// [W_ih | W_hh], took 49 + 12 us for 512 x 160 on this project's AMD CPU; with this loop (and one copy a
// call instead of one a row block) a one-step call at B=64, I=32, H=128 went from 235 to 116-120 us.
at::Tensor cut_into_panels(const std::vector<at::Tensor>& pieces) {
  const int64_t N = pieces[0].size(0);
  int64_t K = 0;
  for (const auto& piece : pieces) K += piece.size(1);
  at::Tensor panels = at::empty({N * K}, pieces[0].options());
  float* out = panels.data_ptr<float>();
  const int64_t n_panels = (N + panel_cols - 1) / panel_cols;
  const int64_t grain = std::max<int64_t>(1, (int64_t{1} << 16) / (panel_cols * std::max<int64_t>(K, 1)));
  at::parallel_for(0, n_panels, grain, [&](int64_t begin, int64_t end) {
    for (int64_t p = begin; p < end; ++p) {
      const int64_t n0 = p * panel_cols, width = std::min(panel_cols, N - n0);
      float* panel = out + n0 * K;  // K rows of `width`
      int64_t k0 = 0;
      for (const auto& piece : pieces) {
        const float* src = piece.data_ptr<float>();
        const int64_t s0 = piece.stride(0), s1 = piece.stride(1), depth = piece.size(1);
        // In blocks of 16 of K, so that the reads along K and the writes along the panel's rows both
        // stay within a few cache lines.
        for (int64_t kb = 0; kb < depth; kb += 16) {
          const int64_t k_end = std::min(depth, kb + 16);
          for (int64_t j = 0; j < width; ++j)
            for (int64_t k = kb; k < k_end; ++k) panel[(k0 + k) * width + j] = src[(n0 + j) * s0 + k * s1];
        }
        k0 += depth;
      }
    }
  });
  return panels;
}

// out (M, N) = (out +) a (M, K) @ W^T on the brgemm micro-kernel, W^T from `panels`; a's rows may be
// strided, out is contiguous. The micro-kernel is single-threaded: the threads take panels (and row
// blocks when there are too few panels to keep them busy).
void brgemm_mm(const at::Tensor& a, const at::Tensor& panels, at::Tensor& out, bool add) {
  const int64_t M = a.size(0), K = a.size(1), N = out.size(1), lda = a.stride(0);
  const float* a_ptr = a.data_ptr<float>();
  const float* panels_ptr = panels.data_ptr<float>();
  float* out_ptr = out.data_ptr<float>();
  // Below 2^17 multiply-adds on the calling thread: a fork and join of the pool (~0.65 us here) cost more.
  const int64_t threads = (M * N * K >= (int64_t{1} << 17)) ? at::get_num_threads() : 1;
  const int64_t col_blocks = (N + panel_cols - 1) / panel_cols;
  const int64_t row_blocks =
      threads == 1 ? 1 : std::max<int64_t>(1, std::min((2 * threads + col_blocks - 1) / col_blocks, M / 16));
  const int64_t block_rows = (M + row_blocks - 1) / row_blocks, blocks = col_blocks * row_blocks;
  at::parallel_for(0, blocks, threads == 1 ? blocks : 1, [&](int64_t begin, int64_t end) {
    for (int64_t block = begin; block < end; ++block) {
      const int64_t n0 = (block % col_blocks) * panel_cols, m0 = (block / col_blocks) * block_rows;
      const int64_t n = std::min(panel_cols, N - n0), m = std::min(block_rows, M - m0);
      if (m > 0)
        at::native::cpublas::brgemm(m, n, K, lda, n, N, add, a_ptr + m0 * lda, panels_ptr + n0 * K,
                                    out_ptr + m0 * N + n0, false);
    }
  });
}

// One R x NB tile of out = (other +) a @ wt, accumulated in registers over all of K; `rows` x `cols`
// of it are real (edge tiles). The full-tile instance has constant bounds, so GCC keeps the
// accumulators in vector registers; `other` may be `out` (read before any write).
template <typename S, int R, int NB, bool full>
inline void gemm_tile(int64_t K, int64_t N, int64_t lda, const S* __restrict__ a, const S* __restrict__ wt,
                      const S* other, S* out, int64_t rows, int64_t cols) {
  using A = at::opmath_type<S>;
  const int64_t n_rows = full ? R : rows, n_cols = full ? NB : cols;
  A acc[R][NB];
  for (int64_t r = 0; r < n_rows; ++r)
    for (int64_t j = 0; j < n_cols; ++j) acc[r][j] = other ? A(other[r * N + j]) : A(0);
  for (int64_t kk = 0; kk < K; ++kk) {
    const S* __restrict__ w = wt + kk * N;
    for (int64_t r = 0; r < n_rows; ++r) {
      const A av = A(a[r * lda + kk]);
      #pragma GCC ivdep
      for (int64_t j = 0; j < n_cols; ++j) acc[r][j] += av * A(w[j]);
    }
  }
  for (int64_t r = 0; r < n_rows; ++r)
    for (int64_t j = 0; j < n_cols; ++j) out[r * N + j] = S(acc[r][j]);
}

// out = (other +) a @ wt for a (M, K) with unit column stride, wt (K, N), other and out (M, N)
// contiguous. Tiles go to threads column block by column block, so a thread's consecutive tiles
// reuse the same K x NB slice of wt from cache.
template <typename S>
void tiled_gemm(const at::Tensor& a, const at::Tensor& wt, const at::Tensor* other, at::Tensor& out) {
  using A = at::opmath_type<S>;
  constexpr int R = 4, NB = 256 / sizeof(A);  // 4 x 4 AVX-512 accumulators (of 32 registers)
  const int64_t M = a.size(0), K = a.size(1), N = wt.size(1), lda = a.stride(0);
  const int64_t row_tiles = (M + R - 1) / R, col_tiles = (N + NB - 1) / NB;
  const S* a_ptr = a.data_ptr<S>();
  const S* wt_ptr = wt.data_ptr<S>();
  const S* other_ptr = other ? other->data_ptr<S>() : nullptr;
  S* out_ptr = out.data_ptr<S>();
  const int64_t grain = std::max<int64_t>(1, 65536 / (R * NB * std::max<int64_t>(K, 1)));  // >= 64K MACs a thread
  at::parallel_for(0, row_tiles * col_tiles, grain, [&](int64_t begin, int64_t end) {
    for (int64_t tile = begin; tile < end; ++tile) {
      const int64_t n0 = (tile / row_tiles) * NB, m0 = (tile % row_tiles) * R;
      const int64_t rows = std::min<int64_t>(R, M - m0), cols = std::min<int64_t>(NB, N - n0);
      const S* tile_other = other_ptr ? other_ptr + m0 * N + n0 : nullptr;
      if (rows == R && cols == NB)
        gemm_tile<S, R, NB, true>(K, N, lda, a_ptr + m0 * lda, wt_ptr + n0, tile_other, out_ptr + m0 * N + n0, rows,
                                  cols);
      else
        gemm_tile<S, R, NB, false>(K, N, lda, a_ptr + m0 * lda, wt_ptr + n0, tile_other, out_ptr + m0 * N + n0, rows,
                                   cols);
    }
  });
}

// torch's private mkldnn ops, looked up once; none when torch was built without oneDNN or their
// signatures changed in another torch version (then every GEMM stays on MKL).
using ReorderFn = at::Tensor(const at::Tensor&, std::optional<int64_t>);
using LinearFn = at::Tensor(const at::Tensor&, const at::Tensor&, const std::optional<at::Tensor>&, c10::string_view,
                            c10::List<std::optional<at::Scalar>>, std::optional<c10::string_view>);
using LinearAddFn = at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&,
                               const std::optional<at::Tensor>&, c10::string_view);
struct OneDnnOps {
  c10::TypedOperatorHandle<ReorderFn> reorder;
  c10::TypedOperatorHandle<LinearFn> linear;
  c10::TypedOperatorHandle<LinearAddFn> linear_add;
};

const std::optional<OneDnnOps>& onednn_ops() {
  static const std::optional<OneDnnOps> ops = []() -> std::optional<OneDnnOps> {
    auto& dispatcher = c10::Dispatcher::singleton();
    try {
      return OneDnnOps{dispatcher.findSchemaOrThrow("mkldnn::_reorder_linear_weight", "").typed<ReorderFn>(),
                       dispatcher.findSchemaOrThrow("mkldnn::_linear_pointwise", "").typed<LinearFn>(),
                       dispatcher.findSchemaOrThrow("mkldnn::_linear_pointwise", "binary").typed<LinearAddFn>()};
    } catch (const c10::Error&) {
      return std::nullopt;
    }
  }();
  return ops;
}

int64_t exchange(int64_t& threshold, int64_t macs) {
  const int64_t previous = threshold;
  threshold = macs;
  return previous;
}

}  // namespace

StepGemm::Kind StepGemm::kind(at::ScalarType dtype, int64_t rows, int64_t N, int64_t K, int64_t steps) {
  // brgemm's panels and the tiled GEMM's W^T are a copy of W per sequence: worth it only over several rows.
  const int64_t macs = rows * N * K;
  const bool reused = rows * steps >= 8;
  if (dtype == at::kFloat && K <= brgemm_max_depth && reused) return Kind::brgemm;
  if (macs <= tiled_max_macs && reused) return Kind::tiled;
  if (dtype != at::kFloat || macs < onednn_min_macs || !at::globalContext().userEnabledMkldnn() || !onednn_ops())
    return Kind::mkl;
  return Kind::onednn;
}

StepGemm::StepGemm(const std::vector<at::Tensor>& pieces, int64_t rows, int64_t steps) {
  int64_t K = 0;
  for (const auto& piece : pieces) K += piece.size(1);
  const int64_t N = pieces[0].size(0);
  // W itself, for the kinds that take it whole (one piece is used as it is).
  auto whole = [&] { return pieces.size() == 1 ? pieces[0] : at::cat(pieces, 1); };
  switch (kind(pieces[0].scalar_type(), rows, N, K, steps)) {
    case Kind::brgemm:
      brgemm_panels_ = cut_into_panels(pieces);
      break;
    case Kind::tiled: {
      std::vector<at::Tensor> transposed;
      for (const auto& piece : pieces) transposed.push_back(piece.t());
      tiled_weight_t_ = transposed.size() == 1 ? transposed[0].contiguous() : at::cat(transposed, 0);
      break;
    }
    case Kind::onednn:
      onednn_packed_ = onednn_ops()->reorder.call(whole().contiguous(), rows);
      break;
    case Kind::mkl:
      weight_t_ = whole().t();
      break;
  }
}

at::Tensor StepGemm::mm(const at::Tensor& a, at::Tensor& out) const {
  if (brgemm_panels_.defined()) {
    brgemm_mm(a, brgemm_panels_, out, false);
    return out;
  }
  if (tiled_weight_t_.defined()) return tiled(a, nullptr, out);
  if (!onednn()) return at::mm_out(out, a, weight_t_);
  return onednn_ops()->linear.call(a, onednn_packed_, std::nullopt, "none", c10::List<std::optional<at::Scalar>>(),
                                   std::nullopt);
}

at::Tensor StepGemm::addmm(const at::Tensor& other, const at::Tensor& a, at::Tensor& out) const {
  if (brgemm_panels_.defined()) {
    if (!other.is_same(out)) out.copy_(other);
    brgemm_mm(a, brgemm_panels_, out, true);
    return out;
  }
  if (tiled_weight_t_.defined()) return tiled(a, &other, out);
  if (!onednn()) return at::addmm_out(out, other, a, weight_t_);
  return onednn_ops()->linear_add.call(a, other, onednn_packed_, std::nullopt, "add");
}

at::Tensor StepGemm::tiled(const at::Tensor& a, const at::Tensor* other, at::Tensor& out) const {
  TORCH_INTERNAL_ASSERT(a.stride(1) == 1 && out.is_contiguous() && (!other || other->is_contiguous()));
  AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, a.scalar_type(), "fused_lstm_tiled_gemm",
                                 [&] { tiled_gemm<scalar_t>(a, tiled_weight_t_, other, out); });
  return out;
}

int64_t set_tiled_max_macs(int64_t macs) { return exchange(tiled_max_macs, macs); }
int64_t set_brgemm_max_depth(int64_t depth) { return exchange(brgemm_max_depth, depth); }
int64_t set_onednn_min_macs(int64_t macs) { return exchange(onednn_min_macs, macs); }

}  // namespace fused_lstm
