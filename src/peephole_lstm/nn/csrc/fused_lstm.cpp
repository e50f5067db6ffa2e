// Whole-sequence peephole LSTM for CPU tensors: forward and hand-written BPTT backward.
//
// The math is the one in peephole_lstm/nn/functional.py (lstm_step); fused.py holds the same algorithm
// in plain PyTorch for CUDA tensors and for installs without this extension, and tests compare both
// with the eager loop. Per time step there is one recurrent GEMM (StepGemm: oneDNN's brgemm micro-kernel,
// this file's tiled GEMM, oneDNN's matmul on a prepacked weight, or MKL's at::mm, by dtype and size) and
// one or two hand-written pointwise loops that compute every gate at once. In training the input
// projection and the weight gradients are not done here: the caller projects all steps in one GEMM
// beforehand, and the backward returns dZ for all steps, so dW_hh, dW_hr and the full-peephole gradients
// are each one big GEMM after the loop (M = T*B instead of B). Without a backward (needs_grad=false) the
// forward keeps only what the next step reads, and may take x instead of its projection (see forward_impl).
#include <torch/extension.h>

#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/native/CPUBlas.h>
#include <ATen/core/dispatch/Dispatcher.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <map>
#include <mutex>
#include <utility>
#include <vector>
#ifdef __linux__
#include <sys/mman.h>
#endif

namespace {

// exp for float in plain arithmetic (Cephes polynomial, ~2 ulp), so the gate loops vectorise: a scalar
// libm call per element would cost more than the whole recurrent GEMM at the medium shape.
inline float exp_approx(float x) {
  x = std::min(std::max(x, -87.3f), 88.3f);
  const float t = x * 1.44269504088896341f + 12582912.0f;  // round(x / ln 2) in the low mantissa bits
  const float n = t - 12582912.0f;
  const float r = x - n * 0.693359375f + n * 2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  const float y = p * r * r + r + 1.0f;
  int32_t ti;
  std::memcpy(&ti, &t, sizeof ti);
  const int32_t bits = (ti - 0x4B400000 + 127) << 23;
  float scale;
  std::memcpy(&scale, &bits, sizeof scale);
  return y * scale;
}

inline float sigmoid(float x) { return 1.0f / (1.0f + exp_approx(-x)); }
inline float tanh_(float x) { return 1.0f - 2.0f / (exp_approx(2.0f * x) + 1.0f); }
inline double sigmoid(double x) { return 1.0 / (1.0 + std::exp(-x)); }
inline double tanh_(double x) { return std::tanh(x); }

// Static layout and flags, decoded once from the Python side's tuple.
struct Config {
  int64_t bi, bf, bg, bo;  // gate block index in the stacked G*H columns, -1 when absent
  int64_t pi, pf, po;      // peephole row of weight_ch, -1 when absent
  bool full, current, coupled, act_in, act_out;
  double clip, zoneout;
  // Full peepholes: which of i, f, o read c_{t-1} through one stacked GEMM, and their slot in it.
  int64_t si = -1, sf = -1, so = -1, n_prev = 0;
  bool o_full_current() const { return full && bo >= 0 && po >= 0 && current; }
  bool need_cn() const { return clip > 0 || zoneout > 0; }
};

Config make_config(const std::vector<int64_t>& idx, const std::vector<bool>& flags, double clip, double zoneout) {
  TORCH_CHECK(idx.size() == 7 && flags.size() == 5, "fused_lstm: bad layout");
  Config k{idx[0], idx[1], idx[2], idx[3], idx[4], idx[5], idx[6],
           flags[0], flags[1], flags[2], flags[3], flags[4], clip, zoneout};
  if (k.full) {
    if (k.bi >= 0 && k.pi >= 0) k.si = k.n_prev++;
    if (k.bf >= 0 && k.pf >= 0) k.sf = k.n_prev++;
    if (k.bo >= 0 && k.po >= 0 && !k.current) k.so = k.n_prev++;
  }
  return k;
}

// (gate block, weight_ch row) of the gates whose full peepholes read c_{t-1}, in their slot order.
std::vector<std::pair<int64_t, int64_t>> prev_peephole_gates(const Config& k) {
  std::vector<std::pair<int64_t, int64_t>> gates;
  if (k.si >= 0) gates.emplace_back(k.bi, k.pi);
  if (k.sf >= 0) gates.emplace_back(k.bf, k.pf);
  if (k.so >= 0) gates.emplace_back(k.bo, k.po);
  return gates;
}

// Their rows of weight_ch (P, H, H), stacked to (n_prev*H, H).
at::Tensor stacked_prev_peepholes(const Config& k, const at::Tensor& w_ch) {
  std::vector<at::Tensor> rows;
  for (const auto& [block, row] : prev_peephole_gates(k)) rows.push_back(w_ch[row]);
  return at::cat(rows, 0).contiguous();
}

// The columns of dZ_t (B, G*H) that multiply those stacked rows in the backward, in the same order:
// a view when the gate blocks are adjacent (i, f of the usual i f g o layout), else a copy.
at::Tensor prev_peephole_columns(const std::vector<std::pair<int64_t, int64_t>>& gates, const at::Tensor& dz_t,
                                 int64_t H) {
  const int64_t first = gates[0].first, n = static_cast<int64_t>(gates.size());
  bool adjacent = true;
  for (int64_t j = 1; j < n; ++j) adjacent = adjacent && gates[j].first == first + j;
  if (adjacent) return dz_t.narrow(1, first * H, n * H);
  std::vector<at::Tensor> cols;
  for (const auto& [block, row] : gates) cols.push_back(dz_t.narrow(1, block * H, H));
  return at::cat(cols, 1);
}

// Big buffers reused across calls. Every training step allocates the same few large buffers (the
// gates and states of all steps, dZ); from malloc each is a fresh mmap region whose first touch
// page-faults, about 30 ms per 100 MB on this project's VM, a tenth of a large-shape training step.
// Blocks the kernel frees are kept for its next call instead, in huge pages where the OS allows.
// A request takes the smallest free block that fits and is at most twice its size, so that batches
// of varying sequence length reuse blocks too. Only the kernel's internal buffers come from here,
// never tensors handed to the user.
class BufferCache {
 public:
  static constexpr size_t kMinBytes = size_t{1} << 20;  // smaller ones stay with malloc's own reuse
  static constexpr size_t kAlign = size_t{2} << 20;      // one transparent huge page
  static constexpr size_t kMaxFreeBytes = size_t{1} << 30;

  static BufferCache& get() {
    static auto* cache = new BufferCache();  // never destroyed: tensors may outlive static destructors
    return *cache;
  }
  // A block of at least `bytes`: (address, its actual size).
  std::pair<void*, size_t> take(size_t bytes) {
    {
      std::lock_guard<std::mutex> lock(m_);
      auto it = free_.lower_bound(bytes);
      if (it != free_.end() && it->first <= 2 * bytes) {
        const auto block = std::make_pair(it->second, it->first);
        free_.erase(it);
        free_bytes_ -= block.second;
        return block;
      }
    }
    void* p = nullptr;
    TORCH_CHECK(posix_memalign(&p, kAlign, bytes) == 0, "fused_lstm: out of memory allocating ", bytes, " bytes");
#ifdef __linux__
    madvise(p, bytes, MADV_HUGEPAGE);  // advice only: without THP this is a no-op
#endif
    return {p, bytes};
  }
  void give(void* p, size_t bytes) {
    {
      std::lock_guard<std::mutex> lock(m_);
      if (free_bytes_ + bytes <= kMaxFreeBytes) {
        free_.emplace(bytes, p);
        free_bytes_ += bytes;
        return;
      }
    }
    std::free(p);
  }
  size_t release() {
    std::lock_guard<std::mutex> lock(m_);
    for (auto& kv : free_) std::free(kv.second);
    free_.clear();
    return std::exchange(free_bytes_, 0);
  }
  size_t free_bytes() {
    std::lock_guard<std::mutex> lock(m_);
    return free_bytes_;
  }

 private:
  std::mutex m_;
  std::multimap<size_t, void*> free_;
  size_t free_bytes_ = 0;
};

at::Tensor workspace(at::IntArrayRef sizes, const at::TensorOptions& opt) {
  const size_t bytes = c10::multiply_integers(sizes) * opt.dtype().itemsize();
  if (bytes < BufferCache::kMinBytes) return at::empty(sizes, opt);
  const size_t rounded = (bytes + BufferCache::kAlign - 1) / BufferCache::kAlign * BufferCache::kAlign;
  const auto [p, size] = BufferCache::get().take(rounded);
  return at::from_blob(p, sizes, [size = size](void* q) { BufferCache::get().give(q, size); }, opt);
}

// The recurrent GEMM a @ W^T of every step, with the same weight W (N, K) for the whole sequence.
// In float32 from about this many multiply-adds on, oneDNN's matmul on a weight reordered once per
// sequence (the mkldnn ops torch's inductor uses for frozen linears) beats at::mm (MKL): 0.64 vs
// 1.0 ms for 64x512 @ 512x2048 on 2 threads of this project's AMD CPU; below it, its fixed
// per-call cost loses (equal at 64x128 @ 128x512). Settable for tests (set_onednn_min_macs).
int64_t onednn_min_macs = int64_t{1} << 23;
// Up to this many multiply-adds a per-step GEMM runs on the register-tiled GEMM below: no per-call
// setup (about 3 us for MKL, more for oneDNN, half a whole step at the small shape), and for these
// thin matrices (B rows) it beat MKL's sgemm on 2 threads of this project's AMD CPU (16x128 @ 128x512:
// 15.6 vs 22.8 us; 64x128 @ 128x512: 50 vs 69 us). Only in AVX-512 builds (-march=native here): built
// for AVX2 (-march=haswell) the same code ran the medium shape 4.7x slower than with MKL, so other
// builds leave every GEMM to the libraries. Settable for tests (set_tiled_max_macs).
#if defined(__AVX512F__)
int64_t tiled_max_macs = int64_t{1} << 23;
#else
int64_t tiled_max_macs = -1;
#endif
// Float32 GEMMs up to this many multiply-adds run on oneDNN's brgemm micro-kernel (JIT-compiled for
// the CPU, the kernel family oneDNN's own LSTM uses; torch exports it as at::native::cpublas::brgemm,
// falling back to MKL where its build lacks it), split over the threads by column blocks. Measured on
// one thread of this project's AMD CPU: 64x160 @ 160x512 at 107 GFLOP/s against 70 for the tiled GEMM
// below and 79 for oneDNN's matmul; 64x512 @ 512x128 (the backward's) at 109 against 64. Above it
// (64x576 @ 576x2048: 77 vs 82 GFLOP/s) the weight no longer fits the L2 cache and oneDNN's matmul on
// its own packed layout wins. Settable for tests (set_brgemm_max_macs).
int64_t brgemm_max_macs = int64_t{1} << 23;

// out (M, N) = (out +) a (M, K) @ wt (K, N) on the brgemm micro-kernel; a's rows may be strided, wt
// and out are contiguous. The micro-kernel is single-threaded: the threads take column blocks (and
// row blocks when there are too few columns to keep them busy).
void brgemm_mm(const at::Tensor& a, const at::Tensor& wt, at::Tensor& out, bool add) {
  const int64_t M = a.size(0), K = a.size(1), N = wt.size(1), lda = a.stride(0);
  const float* pa = a.data_ptr<float>();
  const float* pw = wt.data_ptr<float>();
  float* po = out.data_ptr<float>();
  const int64_t threads = (M * N * K >= (int64_t{1} << 17)) ? at::get_num_threads() : 1;
  const int64_t nb = N >= 128 * 2 * threads ? 128 : 64;
  const int64_t n_blocks = (N + nb - 1) / nb;
  const int64_t m_blocks = std::max<int64_t>(1, std::min((2 * threads + n_blocks - 1) / n_blocks, M / 16));
  const int64_t mb = (M + m_blocks - 1) / m_blocks;
  at::parallel_for(0, n_blocks * m_blocks, 1, [&](int64_t b0, int64_t b1) {
    for (int64_t blk = b0; blk < b1; ++blk) {
      const int64_t n0 = (blk % n_blocks) * nb, m0 = (blk / n_blocks) * mb;
      const int64_t n = std::min(nb, N - n0), m = std::min(mb, M - m0);
      if (m > 0)
        at::native::cpublas::brgemm(m, n, K, lda, N, N, add, pa + m0 * lda, pw + n0, po + m0 * N + n0, false);
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
  const int64_t nr = full ? R : rows, nc = full ? NB : cols;
  A acc[R][NB];
  for (int64_t r = 0; r < nr; ++r)
    for (int64_t j = 0; j < nc; ++j) acc[r][j] = other ? A(other[r * N + j]) : A(0);
  for (int64_t k = 0; k < K; ++k) {
    const S* __restrict__ w = wt + k * N;
    for (int64_t r = 0; r < nr; ++r) {
      const A av = A(a[r * lda + k]);
      #pragma GCC ivdep
      for (int64_t j = 0; j < nc; ++j) acc[r][j] += av * A(w[j]);
    }
  }
  for (int64_t r = 0; r < nr; ++r)
    for (int64_t j = 0; j < nc; ++j) out[r * N + j] = S(acc[r][j]);
}

// out = (other +) a @ wt for a (M, K) with unit column stride, wt (K, N), other and out (M, N)
// contiguous. Tiles go to threads column block by column block, so a thread's consecutive tiles
// reuse the same K x NB slice of wt from cache.
template <typename S>
void tiled_gemm(const at::Tensor& a, const at::Tensor& wt, const at::Tensor* other, at::Tensor& out) {
  using A = at::opmath_type<S>;
  constexpr int R = 4, NB = 256 / sizeof(A);  // 4 x 4 AVX-512 accumulators (of 32 registers)
  const int64_t M = a.size(0), K = a.size(1), N = wt.size(1), lda = a.stride(0);
  const int64_t mt = (M + R - 1) / R, nt = (N + NB - 1) / NB;
  const S* pa = a.data_ptr<S>();
  const S* pw = wt.data_ptr<S>();
  const S* po_in = other ? other->data_ptr<S>() : nullptr;
  S* po = out.data_ptr<S>();
  const int64_t grain = std::max<int64_t>(1, 65536 / (R * NB * std::max<int64_t>(K, 1)));  // >= 64K MACs a thread
  at::parallel_for(0, mt * nt, grain, [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t n0 = (t / mt) * NB, m0 = (t % mt) * R;
      const int64_t rows = std::min<int64_t>(R, M - m0), cols = std::min<int64_t>(NB, N - n0);
      const S* o = po_in ? po_in + m0 * N + n0 : nullptr;
      if (rows == R && cols == NB)
        gemm_tile<S, R, NB, true>(K, N, lda, pa + m0 * lda, pw + n0, o, po + m0 * N + n0, rows, cols);
      else
        gemm_tile<S, R, NB, false>(K, N, lda, pa + m0 * lda, pw + n0, o, po + m0 * N + n0, rows, cols);
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
    auto& d = c10::Dispatcher::singleton();
    try {
      return OneDnnOps{d.findSchemaOrThrow("mkldnn::_reorder_linear_weight", "").typed<ReorderFn>(),
                       d.findSchemaOrThrow("mkldnn::_linear_pointwise", "").typed<LinearFn>(),
                       d.findSchemaOrThrow("mkldnn::_linear_pointwise", "binary").typed<LinearAddFn>()};
    } catch (const c10::Error&) {
      return std::nullopt;
    }
  }();
  return ops;
}

class StepGemm {
 public:
  // `rows` of `a` in each of `steps` calls.
  StepGemm(const at::Tensor& w, int64_t rows, int64_t steps) : wt_(w.t()) {
    // brgemm and the tiled GEMM read W^T contiguous, a copy per sequence (none when the caller built
    // it so): worth it only over several rows.
    const int64_t macs = rows * w.size(0) * w.size(1);
    const bool reused = rows * steps >= 8;
    if (w.scalar_type() == at::kFloat && macs <= brgemm_max_macs && reused) {
      brgemm_wt_ = wt_.contiguous();
      return;
    }
    if (macs <= tiled_max_macs && reused) {
      tiled_wt_ = wt_.contiguous();
      return;
    }
    if (w.scalar_type() != at::kFloat || macs < onednn_min_macs ||
        !at::globalContext().userEnabledMkldnn() || !onednn_ops())
      return;
    packed_ = onednn_ops()->reorder.call(w.contiguous(), rows);
  }
  bool onednn() const { return packed_.defined(); }

  // a @ W^T: written into `out` by MKL, brgemm or the tiled GEMM, or a fresh tensor from oneDNN. Use
  // the returned tensor.
  at::Tensor mm(const at::Tensor& a, at::Tensor& out) const {
    if (brgemm_wt_.defined()) {
      brgemm_mm(a, brgemm_wt_, out, false);
      return out;
    }
    if (tiled_wt_.defined()) return tiled(a, nullptr, out);
    if (!onednn()) return at::mm_out(out, a, wt_);
    return onednn_ops()->linear.call(a, packed_, std::nullopt, "none", c10::List<std::optional<at::Scalar>>(),
                                     std::nullopt);
  }
  // other + a @ W^T, likewise (`other` may be `out`).
  at::Tensor addmm(const at::Tensor& other, const at::Tensor& a, at::Tensor& out) const {
    if (brgemm_wt_.defined()) {
      if (!other.is_same(out)) out.copy_(other);
      brgemm_mm(a, brgemm_wt_, out, true);
      return out;
    }
    if (tiled_wt_.defined()) return tiled(a, &other, out);
    if (!onednn()) return at::addmm_out(out, other, a, wt_);
    return onednn_ops()->linear_add.call(a, other, packed_, std::nullopt, "add");
  }
  // bias (N,) + a @ W^T, likewise.
  at::Tensor mm_bias(const at::Tensor& bias, const at::Tensor& a, at::Tensor& out) const {
    if (onednn())
      return onednn_ops()->linear.call(a, packed_, bias, "none", c10::List<std::optional<at::Scalar>>(), std::nullopt);
    if (!brgemm_wt_.defined() && !tiled_wt_.defined()) return at::addmm_out(out, bias, a, wt_);
    out.copy_(bias.expand_as(out));
    return addmm(out, a, out);
  }

 private:
  at::Tensor tiled(const at::Tensor& a, const at::Tensor* other, at::Tensor& out) const {
    TORCH_INTERNAL_ASSERT(a.stride(1) == 1 && out.is_contiguous() && (!other || other->is_contiguous()));
    AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, a.scalar_type(), "fused_lstm_tiled_gemm",
                                   [&] { tiled_gemm<scalar_t>(a, tiled_wt_, other, out); });
    return out;
  }

  at::Tensor wt_, brgemm_wt_, tiled_wt_, packed_;
};

template <typename F>
void for_rows(int64_t rows, int64_t cols, const F& f) {
  // Small steps run inline: waking the thread pool costs more than the loop.
  const int64_t grain = std::max<int64_t>(1, 16384 / std::max<int64_t>(cols, 1));
  at::parallel_for(0, rows, grain, [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b) f(b);
  });
}

// The pointwise loops below are written one simple loop per gate, without branches inside, so that
// the compiler vectorises them; absent gates read a row of ones and write to a scratch row instead.

// dst = sigmoid(x + z + peephole), the peephole being a full-GEMM row `pf` or a diagonal row `w` times
// the cell `cell` (a row of zeros without a peephole: GCC 12 vectorised a third, peephole-free loop
// here so badly that peephole="none" ran its forward 1.5x slower than "diagonal").
template <typename S, typename A>
void sigmoid_gate(int64_t H, S* __restrict__ dst, const S* __restrict__ x, const S* __restrict__ z,
                  const S* __restrict__ pf, const S* __restrict__ w, const S* __restrict__ cell) {
  if (pf) {
    #pragma GCC ivdep
    for (int64_t j = 0; j < H; ++j) dst[j] = sigmoid(A(x[j]) + A(z[j]) + A(pf[j]));
  } else {
    #pragma GCC ivdep
    for (int64_t j = 0; j < H; ++j) dst[j] = sigmoid(A(x[j]) + A(z[j]) + A(w[j]) * A(cell[j]));
  }
}

template <typename S, typename A>
void output_row(int64_t H, bool act_out, const S* __restrict__ o, const S* __restrict__ c, S* __restrict__ r) {
  if (act_out) {
    #pragma GCC ivdep
    for (int64_t j = 0; j < H; ++j) r[j] = A(o[j]) * tanh_(A(c[j]));
  } else {
    #pragma GCC ivdep
    for (int64_t j = 0; j < H; ++j) r[j] = A(o[j]) * A(c[j]);
  }
}

// Backward of the output gate: dz_o, and dc_t up to (not through) the clip, from dr = dL/d(o * act(c)).
template <typename S, typename A, bool act_out>  // a template flag: GCC 12 does not vectorise a select on a bool argument here
void output_grad_row(int64_t H, A clip, const S* __restrict__ cnew, const S* __restrict__ d,
                     const S* __restrict__ dcn, const S* __restrict__ o, const S* __restrict__ wpo,
                     S* __restrict__ dzo, S* __restrict__ dct) {
  #pragma GCC ivdep
  for (int64_t j = 0; j < H; ++j) {
    const A c0 = cnew[j];
    const A lo = c0 < -clip ? -clip : c0;
    const A c = lo > clip ? clip : lo;
    const A th = tanh_(c);  // computed either way: a select vectorises, a branch does not
    const A ac = act_out ? th : c;
    const A dac = act_out ? 1 - th * th : A(1);
    const A go = o[j];
    const A dz = A(d[j]) * ac * go * (1 - go);
    dzo[j] = dz;
    dct[j] = A(dcn[j]) + A(d[j]) * go * dac + dz * A(wpo[j]);
  }
}

// Backward of the cell update and the i, f, g gates; dcx = dL/dc_{t-1} (diagonal peepholes included).
template <typename S, typename A, bool coupled, bool act_in>
void cell_grad_row(int64_t H, A clip, const S* __restrict__ F, const S* __restrict__ I,
                   const S* __restrict__ G, const S* __restrict__ c_old, const S* __restrict__ cnew,
                   const S* __restrict__ dct, const S* __restrict__ dck, const S* __restrict__ dzo,
                   const S* __restrict__ wpi, const S* __restrict__ wpf, const S* __restrict__ wpo,
                   S* __restrict__ dzi, S* __restrict__ dzf, S* __restrict__ dzg, S* __restrict__ dcx) {
  #pragma GCC ivdep
  for (int64_t j = 0; j < H; ++j) {
    const A cpre = cnew[j];
    const A g0 = cpre < -clip ? A(0) : A(dct[j]);
    const A g = cpre > clip ? A(0) : g0;
    const A f = F[j];
    const A i = coupled ? 1 - f : A(I[j]);
    const A gg = G[j];
    const A di = g * gg;
    const A df = g * A(c_old[j]) - (coupled ? di : A(0));
    const A zi = di * i * (1 - i);
    const A zf = df * f * (1 - f);
    dzg[j] = act_in ? g * i * (1 - gg * gg) : g * i;
    dzi[j] = zi;
    dzf[j] = zf;
    dcx[j] = g * f + A(dck[j]);
  }
  // A separate pass: with these three terms in the loop above GCC 12 gives up vectorising it.
  #pragma GCC ivdep
  for (int64_t j = 0; j < H; ++j) dcx[j] = A(dcx[j]) + A(dzi[j]) * A(wpi[j]) + A(dzf[j]) * A(wpf[j]) + A(dzo[j]) * A(wpo[j]);
}

template <typename scalar_t>
// xz: the input projection of all steps (T, B, GH); or, without a backward, undefined with x (T, B, I),
// w_ih (GH, I) and bias (GH, or undefined) instead: each step then computes its own projection in the
// recurrent GEMM, z_t = bias + [x_t | h_{t-1}] [W_ih | W_hh]^T, so the (T, B, GH) projection is never
// written to memory and read back (a quarter of an inference forward at the benchmark's medium shape).
std::vector<at::Tensor> forward_impl(const Config& k, const at::Tensor& xz, const at::Tensor& h0,
                                     const at::Tensor& c0, const at::Tensor& w_hh, const at::Tensor& w_ch,
                                     const at::Tensor& w_hr, const at::Tensor& lengths, bool keep,
                                     const at::Tensor& x, const at::Tensor& w_ih, const at::Tensor& bias) {
  using S = scalar_t;
  using A = at::opmath_type<scalar_t>;
  const bool fused_in = x.defined();
  TORCH_CHECK(!fused_in || !keep, "fused_lstm: the input projection is fused only without a backward");
  const int64_t T = fused_in ? x.size(0) : xz.size(0), B = h0.size(0), GH = w_hh.size(0), H = c0.size(1),
                P = h0.size(1), I = fused_in ? x.size(2) : 0;
  const bool proj = w_hr.defined(), masked = lengths.defined();
  const A z = static_cast<A>(k.zoneout);
  const A clip = k.clip > 0 ? static_cast<A>(k.clip) : std::numeric_limits<A>::infinity();
  auto opt = h0.options();

  // keep: every step's gates and states, saved for the backward (which frees them). Without a
  // backward (inference) only what the next step reads is kept: two state buffers used in turn, and
  // one step's gates, so the memory traffic per step is the step's own, independent of T.
  at::Tensor hs, cs, acts, cn, rs;
  if (keep) {
    hs = workspace({T + 1, B, P}, opt);
    cs = workspace({T + 1, B, H}, opt);
    acts = workspace({T, B, GH}, opt);
    cn = k.need_cn() ? workspace({T, B, H}, opt) : at::Tensor();
    rs = proj ? workspace({T, B, H}, opt) : at::Tensor();
    hs[0].copy_(h0);
    cs[0].copy_(c0);
  } else {
    // With the projection fused the hidden state lives in the step GEMM's left operand [x_t | h_{t-1}].
    hs = at::empty({2, B, I + P}, opt);
    if (fused_in) hs[0].narrow(1, I, P).copy_(h0);
    cs = at::empty({2, B, H}, opt);
    acts = at::empty({1, B, GH}, opt);
    cn = k.need_cn() ? at::empty({1, B, H}, opt) : at::Tensor();
    rs = proj ? at::empty({1, B, H}, opt) : at::Tensor();
  }
  // State s (0..T) and step t's buffers: state 0 of the inference run is h0/c0 themselves (only read).
  auto h_state = [&](int64_t s) {
    return keep ? hs[s] : (fused_in ? hs[s % 2].narrow(1, I, P) : (s == 0 ? h0 : hs[s % 2]));
  };
  const int64_t ldh = fused_in ? I + P : P;  // row stride of the hidden state
  auto c_state = [&](int64_t s) { return keep ? cs[s] : (s == 0 ? c0 : cs[s % 2]); };
  const int64_t slot = keep ? 1 : 0;  // step t's row of acts/cn/rs is t * slot
  auto out = at::empty({T, B, P}, opt);  // its own storage: the caller may modify it in place

  // Fused projection: the weight is [W_ih | W_hh], built transposed (I + P, GH) so brgemm and the tiled
  // GEMM read it without another copy.
  const StepGemm recurrent(fused_in ? at::cat({w_ih.t(), w_hh.t()}, 0).t() : w_hh, B, T);
  auto zbuf = at::empty({B, GH}, opt);
  // The pointwise pass adds x's row to the GEMM's; fused, that row is one row of zeros for all b.
  auto zero_row = fused_in ? at::zeros({GH}, opt) : at::Tensor();
  const int64_t ldx = fused_in ? 0 : GH;
  auto ctmp = at::empty({B, H}, opt);
  auto cpre = k.need_cn() ? at::Tensor() : at::empty({B, H}, opt);  // scratch when cn is not kept
  auto rbuf = at::empty({B, H}, opt);
  auto hnbuf = proj ? at::empty({B, P}, opt) : rbuf;
  auto ones = at::ones({H}, opt);
  auto zeros = at::zeros({H}, opt);  // the "peephole weights" of gates without one
  const S* ZERO = zeros.data_ptr<S>();
  // Full peepholes: one GEMM for the gates reading c_{t-1}, one for o reading c_t.
  std::optional<StepGemm> peep_prev, peep_o;
  at::Tensor pbuf, obuf;
  if (k.full && k.n_prev > 0) {
    peep_prev.emplace(stacked_prev_peepholes(k, w_ch), B, T);
    pbuf = at::empty({B, k.n_prev * H}, opt);
  }
  if (k.o_full_current()) {
    peep_o.emplace(w_ch[k.po], B, T);
    obuf = at::empty({B, H}, opt);
  }
  const S* peep = (w_ch.defined() && !k.full) ? w_ch.data_ptr<S>() : nullptr;
  const S* ONE = ones.data_ptr<S>();
  const int64_t* len = masked ? lengths.data_ptr<int64_t>() : nullptr;
  const bool o_now = !k.o_full_current();

  for (int64_t t = 0; t < T; ++t) {
    const at::Tensor h_prev = h_state(t), c_prev = c_state(t);
    at::Tensor zt;
    if (fused_in) {
      auto a = hs[t % 2];  // [x_t | h_{t-1}]
      a.narrow(1, 0, I).copy_(x[t]);
      zt = bias.defined() ? recurrent.mm_bias(bias, a, zbuf) : recurrent.mm(a, zbuf);
    } else {
      zt = recurrent.mm(h_prev, zbuf);
    }
    const auto pt = peep_prev ? peep_prev->mm(c_prev, pbuf) : at::Tensor();

    const S* X = fused_in ? zero_row.data_ptr<S>() : xz.data_ptr<S>() + t * B * GH;
    const S* Z = zt.data_ptr<S>();
    const S* CP = c_prev.data_ptr<S>();
    const S* PB = pt.defined() ? pt.data_ptr<S>() : nullptr;
    S* ACT = acts.data_ptr<S>() + t * slot * B * GH;
    S* CN = k.need_cn() ? cn.data_ptr<S>() + t * slot * B * H : cpre.data_ptr<S>();
    S* CT = ctmp.data_ptr<S>();
    S* R = proj ? rs.data_ptr<S>() + t * slot * B * H : rbuf.data_ptr<S>();
    for_rows(B, GH, [&](int64_t b) {
      const S* x = X + b * ldx;
      const S* zr = Z + b * GH;
      const S* cp = CP + b * H;
      const S* pb = PB ? PB + b * k.n_prev * H : nullptr;
      S* a = ACT + b * GH;
      auto peep_of = [&](int64_t row) { return (row >= 0 && peep) ? peep + row * H : ZERO; };
      auto full_of = [&](int64_t slot) { return slot >= 0 ? pb + slot * H : nullptr; };
      if (k.bi >= 0) sigmoid_gate<S, A>(H, a + k.bi * H, x + k.bi * H, zr + k.bi * H, full_of(k.si), peep_of(k.pi), cp);
      if (k.bf >= 0) sigmoid_gate<S, A>(H, a + k.bf * H, x + k.bf * H, zr + k.bf * H, full_of(k.sf), peep_of(k.pf), cp);
      {
        S* __restrict__ g = a + k.bg * H;
        const S* __restrict__ xg = x + k.bg * H;
        const S* __restrict__ zg = zr + k.bg * H;
        if (k.act_in) {
          #pragma GCC ivdep
          for (int64_t j = 0; j < H; ++j) g[j] = tanh_(A(xg[j]) + A(zg[j]));
        } else {
          #pragma GCC ivdep
          for (int64_t j = 0; j < H; ++j) g[j] = A(xg[j]) + A(zg[j]);
        }
      }
      {
        const S* __restrict__ F = k.bf >= 0 ? a + k.bf * H : ONE;
        const S* __restrict__ I = k.bi >= 0 ? a + k.bi * H : ONE;
        const S* __restrict__ G = a + k.bg * H;
        const S* __restrict__ c_old = cp;
        S* __restrict__ cnr = CN + b * H;
        S* __restrict__ ctr = CT + b * H;
        const bool coupled = k.coupled;
        #pragma GCC ivdep
        for (int64_t j = 0; j < H; ++j) {
          const A f = F[j];
          const A i = coupled ? A(1) - f : A(I[j]);
          const A c = f * A(c_old[j]) + i * A(G[j]);
          cnr[j] = c;
          const A lo = c < -clip ? -clip : c;
          ctr[j] = lo > clip ? clip : lo;
        }
      }
      if (o_now) {
        if (k.bo >= 0) {
          const S* cell = k.current ? CT + b * H : cp;
          sigmoid_gate<S, A>(H, a + k.bo * H, x + k.bo * H, zr + k.bo * H, full_of(k.so), peep_of(k.po), cell);
        }
        output_row<S, A>(H, k.act_out, k.bo >= 0 ? a + k.bo * H : ONE, CT + b * H, R + b * H);
      }
    });
    if (!o_now) {
      const auto ot = peep_o->mm(ctmp, obuf);
      const S* OB = ot.data_ptr<S>();
      for_rows(B, H, [&](int64_t b) {
        S* o = ACT + b * GH + k.bo * H;
        sigmoid_gate<S, A>(H, o, X + b * ldx + k.bo * H, Z + b * GH + k.bo * H, OB + b * H, nullptr, nullptr);
        output_row<S, A>(H, k.act_out, o, CT + b * H, R + b * H);
      });
    }
    if (proj) at::mm_out(hnbuf, rs[t * slot], w_hr.t());

    // Carry the state: zoneout (eval) mixes with the previous state, padded steps keep it.
    const S* HN = hnbuf.data_ptr<S>();
    const S* HP = h_prev.data_ptr<S>();
    const at::Tensor h_next = h_state(t + 1), c_next = c_state(t + 1);
    S* HS = h_next.data_ptr<S>();
    S* CS = c_next.data_ptr<S>();
    S* O = out.data_ptr<S>() + t * B * P;
    for_rows(B, P + H, [&](int64_t b) {
      const bool live = !len || len[b] > t;
      S* __restrict__ hs_r = HS + b * ldh;
      S* __restrict__ cs_r = CS + b * H;
      const S* __restrict__ hp = HP + b * ldh;
      const S* __restrict__ hn = HN + b * P;
      const S* __restrict__ cp = CP + b * H;
      const S* __restrict__ ct = CT + b * H;
      if (live) {
        #pragma GCC ivdep
        for (int64_t j = 0; j < P; ++j) hs_r[j] = A(hn[j]) * (1 - z) + A(hp[j]) * z;
        #pragma GCC ivdep
        for (int64_t j = 0; j < H; ++j) cs_r[j] = A(ct[j]) * (1 - z) + A(cp[j]) * z;
        std::copy(hs_r, hs_r + P, O + b * P);
      } else {
        std::copy(hp, hp + P, hs_r);
        std::copy(cp, cp + H, cs_r);
        std::fill(O + b * P, O + (b + 1) * P, S(0));
      }
    });
  }
  if (!keep) return {out, h_state(T).clone(), c_state(T).clone()};  // fresh: h0/c0 when T = 0
  return {out, hs, cs, acts, cn, rs};
}

// dw[j] = sum_n d[n, j] * src[n, j] (d with row stride ld): one pass, no temporary of N*H elements.
template <typename S, typename A>
void diag_grad(int64_t N, int64_t H, int64_t ld, const S* d, const S* src, S* dw) {
  std::vector<A> acc(H, A(0));
  A* __restrict__ a = acc.data();
  for (int64_t n = 0; n < N; ++n) {
    const S* __restrict__ dr = d + n * ld;
    const S* __restrict__ sr = src + n * H;
#pragma GCC ivdep
    for (int64_t j = 0; j < H; ++j) a[j] += A(dr[j]) * A(sr[j]);
  }
  for (int64_t j = 0; j < H; ++j) dw[j] = acc[j];
}

template <typename scalar_t>
std::vector<at::Tensor> backward_impl(const Config& k, const at::Tensor& grad_out, const at::Tensor& grad_hn,
                                      const at::Tensor& grad_cn, const at::Tensor& hs, const at::Tensor& cs,
                                      const at::Tensor& acts, const at::Tensor& cn, const at::Tensor& rs,
                                      const at::Tensor& w_hh, const at::Tensor& w_ch, const at::Tensor& w_hr,
                                      const at::Tensor& lengths) {
  using S = scalar_t;
  using A = at::opmath_type<scalar_t>;
  const int64_t T = acts.size(0), B = acts.size(1), GH = acts.size(2), H = cs.size(2), P = hs.size(2);
  const bool proj = w_hr.defined();
  const A z = static_cast<A>(k.zoneout);
  const A clip = k.clip > 0 ? static_cast<A>(k.clip) : std::numeric_limits<A>::infinity();
  auto opt = acts.options();

  auto dZ = workspace({T, B, GH}, opt);  // the input projection's gradient: autograd frees it
  auto dhn_all = proj ? workspace({T, B, P}, opt) : at::Tensor();
  auto dh = grad_hn.defined() ? grad_hn.contiguous().clone() : at::zeros({B, P}, opt);
  auto dc = grad_cn.defined() ? grad_cn.contiguous().clone() : at::zeros({B, H}, opt);
  auto dh_keep = at::empty({B, P}, opt);
  auto dc_keep = at::empty({B, H}, opt);
  auto dcn = at::empty({B, H}, opt);
  auto dr = at::empty({B, H}, opt);
  auto dct = at::empty({B, H}, opt);
  auto dh_next = at::empty({B, P}, opt);
  const StepGemm recurrent(w_hh.t(), B, T);  // dZ_t W_hh = dZ_t (W_hh^T)^T
  auto dc_next = at::empty({B, H}, opt);
  auto ones = at::ones({H}, opt);
  auto zeros = at::zeros({H}, opt);
  auto sink = at::empty({B, 2 * H}, opt);  // where the gradients of absent gates go
  // Full peepholes, transposed as in the forward: dc_t += dz_o W_o, dc_{t-1} += [dz_i dz_f ..] [W_i; W_f; ..].
  std::optional<StepGemm> peep_prev, peep_o;
  const auto prev_gates = prev_peephole_gates(k);  // empty unless full peepholes read c_{t-1}
  if (!prev_gates.empty()) peep_prev.emplace(stacked_prev_peepholes(k, w_ch).t(), B, T);
  if (k.o_full_current()) peep_o.emplace(w_ch[k.po].t(), B, T);
  const S* peep = (w_ch.defined() && !k.full) ? w_ch.data_ptr<S>() : nullptr;
  const S* ONE = ones.data_ptr<S>();
  const S* ZERO = zeros.data_ptr<S>();
  auto diag_of = [&](int64_t blk, int64_t row, bool reads_prev) {
    return (blk >= 0 && row >= 0 && peep && reads_prev) ? peep + row * H : ZERO;
  };
  const S* WPI = diag_of(k.bi, k.pi, true);
  const S* WPF = diag_of(k.bf, k.pf, true);
  const S* WPO_PREV = diag_of(k.bo, k.po, !k.current);
  const S* WPO_CUR = diag_of(k.bo, k.po, k.current);
  const int64_t* len = lengths.defined() ? lengths.data_ptr<int64_t>() : nullptr;
  const S* GO = grad_out.defined() ? grad_out.data_ptr<S>() : nullptr;

  for (int64_t t = T - 1; t >= 0; --t) {
    // Split the gradient of the carried state into the step's new state and the zoneout/padding carry.
    at::Tensor dhn = proj ? dhn_all[t] : dr;
    {
      const S* DH = dh.data_ptr<S>();
      const S* DC = dc.data_ptr<S>();
      S* DHN = dhn.data_ptr<S>();
      S* DHK = dh_keep.data_ptr<S>();
      S* DCN = dcn.data_ptr<S>();
      S* DCK = dc_keep.data_ptr<S>();
      const S* G = GO ? GO + t * B * P : nullptr;
      for_rows(B, P + H, [&](int64_t b) {
        const bool live = !len || len[b] > t;
        const S* __restrict__ dh_r = DH + b * P;
        const S* __restrict__ dc_r = DC + b * H;
        S* __restrict__ dhn_r = DHN + b * P;
        S* __restrict__ dhk_r = DHK + b * P;
        S* __restrict__ dcn_r = DCN + b * H;
        S* __restrict__ dck_r = DCK + b * H;
        if (!live) {
          std::fill(dhn_r, dhn_r + P, S(0));
          std::copy(dh_r, dh_r + P, dhk_r);
          std::fill(dcn_r, dcn_r + H, S(0));
          std::copy(dc_r, dc_r + H, dck_r);
          return;
        }
        const S* __restrict__ g_r = G ? G + b * P : ZERO;
        const int64_t gstride = G ? 1 : 0;
        #pragma GCC ivdep
        for (int64_t j = 0; j < P; ++j) {
          const A g = A(dh_r[j]) + A(g_r[j * gstride]);
          dhn_r[j] = g * (1 - z);
          dhk_r[j] = g * z;
        }
        #pragma GCC ivdep
        for (int64_t j = 0; j < H; ++j) {
          const A g = dc_r[j];
          dcn_r[j] = g * (1 - z);
          dck_r[j] = g * z;
        }
      });
    }
    if (proj) at::mm_out(dr, dhn, w_hr);

    const S* ACT = acts.data_ptr<S>() + t * B * GH;
    const S* CP = cs.data_ptr<S>() + t * B * H;
    const S* CNEW = k.need_cn() ? cn.data_ptr<S>() + t * B * H : cs.data_ptr<S>() + (t + 1) * B * H;
    const S* DR = dr.data_ptr<S>();
    const S* DCN = dcn.data_ptr<S>();
    S* DZ = dZ.data_ptr<S>() + t * B * GH;
    S* DCT = dct.data_ptr<S>();
    S* SINK = sink.data_ptr<S>();
    // Output gate and the cell's gradient up to the output peephole.
    for_rows(B, H, [&](int64_t b) {
      auto row = k.act_out ? output_grad_row<S, A, true> : output_grad_row<S, A, false>;
      row(H, clip, CNEW + b * H, DR + b * H, DCN + b * H, k.bo >= 0 ? ACT + b * GH + k.bo * H : ONE, WPO_CUR,
          k.bo >= 0 ? DZ + b * GH + k.bo * H : SINK + b * 2 * H, DCT + b * H);
    });
    if (peep_o) {
      dct = peep_o->addmm(dct, dZ[t].narrow(1, k.bo * H, H), dct);
      DCT = dct.data_ptr<S>();
    }

    // The rest of the gates and the gradient to c_{t-1}; padded rows pass the carry through untouched.
    const S* DCK = dc_keep.data_ptr<S>();
    S* DCX = dc_next.data_ptr<S>();
    for_rows(B, GH, [&](int64_t b) {
      const bool live = !len || len[b] > t;
      S* dz = DZ + b * GH;
      if (!live) {
        std::fill(dz, dz + GH, S(0));
        std::copy(DCK + b * H, DCK + (b + 1) * H, DCX + b * H);
        return;
      }
      const S* a = ACT + b * GH;
      auto row = k.coupled ? (k.act_in ? cell_grad_row<S, A, true, true> : cell_grad_row<S, A, true, false>)
                           : (k.act_in ? cell_grad_row<S, A, false, true> : cell_grad_row<S, A, false, false>);
      row(H, clip, k.bf >= 0 ? a + k.bf * H : ONE, k.bi >= 0 ? a + k.bi * H : ONE, a + k.bg * H, CP + b * H,
          CNEW + b * H, DCT + b * H, DCK + b * H, k.bo >= 0 ? dz + k.bo * H : ZERO, WPI, WPF, WPO_PREV,
          k.bi >= 0 ? dz + k.bi * H : SINK + b * 2 * H, k.bf >= 0 ? dz + k.bf * H : SINK + b * 2 * H + H,
          dz + k.bg * H, DCX + b * H);
    });
    auto dz_t = dZ[t];
    if (peep_prev) dc_next = peep_prev->addmm(dc_next, prev_peephole_columns(prev_gates, dz_t, H), dc_next);
    dh_next = recurrent.addmm(dh_keep, dz_t, dh_next);
    std::swap(dh, dh_next);
    std::swap(dc, dc_next);
  }

  // Weight gradients: one GEMM (or reduction) over all T*B rows each.
  auto dZ2 = dZ.view({T * B, GH});
  auto dw_hh = at::mm(dZ2.t(), hs.narrow(0, 0, T).reshape({T * B, P}));
  at::Tensor dw_hr, dw_ch;
  if (proj) dw_hr = at::mm(dhn_all.view({T * B, P}).t(), rs.view({T * B, H}));
  if (w_ch.defined()) {
    auto c_old = cs.narrow(0, 0, T).reshape({T * B, H});
    auto c_new = k.need_cn() ? cn.view({T * B, H}) : cs.narrow(0, 1, T).reshape({T * B, H});
    if (k.need_cn() && k.clip > 0) c_new = c_new.clamp(-k.clip, k.clip);
    dw_ch = at::zeros_like(w_ch);
    auto grad_row = [&](int64_t row, int64_t block, const at::Tensor& src) {
      auto d = dZ2.narrow(1, block * H, H);
      if (k.full) dw_ch[row].copy_(at::mm(d.t(), src));
      else diag_grad<S, A>(T * B, H, GH, d.data_ptr<S>(), src.data_ptr<S>(), dw_ch[row].data_ptr<S>());
    };
    if (k.bi >= 0 && k.pi >= 0) grad_row(k.pi, k.bi, c_old);
    if (k.bf >= 0 && k.pf >= 0) grad_row(k.pf, k.bf, c_old);
    if (k.bo >= 0 && k.po >= 0) grad_row(k.po, k.bo, k.current ? c_new : c_old);
  }
  return {dZ, dh, dc, dw_hh, dw_ch, dw_hr};
}

at::Tensor opt_tensor(const std::optional<at::Tensor>& t) { return t.has_value() ? t->contiguous() : at::Tensor(); }

std::vector<at::Tensor> forward(const std::optional<at::Tensor>& xz, const at::Tensor& h0, const at::Tensor& c0,
                                const at::Tensor& w_hh, const std::optional<at::Tensor>& w_ch,
                                const std::optional<at::Tensor>& w_hr, const std::optional<at::Tensor>& lengths,
                                const std::vector<int64_t>& idx, const std::vector<bool>& flags, double clip,
                                double zoneout, bool needs_grad, const std::optional<at::Tensor>& x,
                                const std::optional<at::Tensor>& w_ih, const std::optional<at::Tensor>& bias) {
  TORCH_CHECK(h0.device().is_cpu(), "fused_lstm extension: CPU tensors only");
  TORCH_CHECK(xz.has_value() != (x.has_value() && w_ih.has_value()),
              "fused_lstm: pass either xz or x and w_ih (the input projection fused into the steps)");
  const Config k = make_config(idx, flags, clip, zoneout);
  std::vector<at::Tensor> res;
  AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, h0.scalar_type(), "fused_lstm_forward", [&] {
    res = forward_impl<scalar_t>(k, opt_tensor(xz), h0.contiguous(), c0.contiguous(), w_hh.contiguous(),
                                 opt_tensor(w_ch), opt_tensor(w_hr), opt_tensor(lengths), needs_grad,
                                 opt_tensor(x), opt_tensor(w_ih), opt_tensor(bias));
  });
  return res;
}

std::vector<at::Tensor> backward(const std::optional<at::Tensor>& grad_out, const std::optional<at::Tensor>& grad_hn,
                                 const std::optional<at::Tensor>& grad_cn, const at::Tensor& hs, const at::Tensor& cs,
                                 const at::Tensor& acts, const std::optional<at::Tensor>& cn,
                                 const std::optional<at::Tensor>& rs, const at::Tensor& w_hh,
                                 const std::optional<at::Tensor>& w_ch, const std::optional<at::Tensor>& w_hr,
                                 const std::optional<at::Tensor>& lengths, const std::vector<int64_t>& idx,
                                 const std::vector<bool>& flags, double clip, double zoneout) {
  const Config k = make_config(idx, flags, clip, zoneout);
  std::vector<at::Tensor> res;
  AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, acts.scalar_type(), "fused_lstm_backward", [&] {
    res = backward_impl<scalar_t>(k, opt_tensor(grad_out), opt_tensor(grad_hn), opt_tensor(grad_cn), hs, cs, acts,
                                  opt_tensor(cn), opt_tensor(rs), w_hh.contiguous(), opt_tensor(w_ch),
                                  opt_tensor(w_hr), opt_tensor(lengths));
  });
  return res;
}

}  // namespace

int64_t empty_cache() { return static_cast<int64_t>(BufferCache::get().release()); }
int64_t cached_bytes() { return static_cast<int64_t>(BufferCache::get().free_bytes()); }

int64_t set_tiled_max_macs(int64_t macs) {
  const int64_t previous = tiled_max_macs;
  tiled_max_macs = macs;
  return previous;
}

int64_t set_brgemm_max_macs(int64_t macs) {
  const int64_t previous = brgemm_max_macs;
  brgemm_max_macs = macs;
  return previous;
}

int64_t set_onednn_min_macs(int64_t macs) {
  const int64_t previous = onednn_min_macs;
  onednn_min_macs = macs;
  return previous;
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("empty_cache", &empty_cache, "free the big buffers kept for reuse; returns how many bytes");
  m.def("cached_bytes", &cached_bytes, "bytes of big buffers kept for reuse (not in use)");
  m.def("set_tiled_max_macs", &set_tiled_max_macs,
        "up to how many multiply-adds a per-step GEMM runs on the kernel's own tiled GEMM; returns the previous value");
  m.def("set_brgemm_max_macs", &set_brgemm_max_macs,
        "up to how many multiply-adds a float32 per-step GEMM runs on oneDNN's brgemm; returns the previous value");
  m.def("set_onednn_min_macs", &set_onednn_min_macs,
        "from how many multiply-adds (B*4H*P) a float32 recurrent GEMM runs on oneDNN; returns the previous value");
  m.def("forward", &forward,
        "peephole LSTM sequence forward (CPU): (out, hs, cs, acts, cn, rs) for the backward when needs_grad, "
        "else (out, h_T, c_T) without keeping any step's gates or states; without a backward, x, w_ih and "
        "bias may replace xz (None) to fuse the input projection into the steps",
        py::arg("xz"), py::arg("h0"), py::arg("c0"), py::arg("w_hh"), py::arg("w_ch"), py::arg("w_hr"),
        py::arg("lengths"), py::arg("idx"), py::arg("flags"), py::arg("clip"), py::arg("zoneout"),
        py::arg("needs_grad") = true, py::arg("x") = py::none(), py::arg("w_ih") = py::none(),
        py::arg("bias") = py::none());
  m.def("backward", &backward, "peephole LSTM sequence backward (CPU)");
}
