// What the forward's and the backward's pointwise loops share: the activations and the row split.
//
// Those loops are written one simple loop per gate, without branches inside, so that GCC vectorises
// them; absent gates read a row of ones and write to a scratch row instead of being tested for.
#pragma once

#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>

namespace fused_lstm {

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

// float (the opmath type of float32 and bfloat16) through exp_approx; double keeps libm, so that
// float64 results keep float64 accuracy.
inline float sigmoid(float x) { return 1.0f / (1.0f + exp_approx(-x)); }
inline float tanh_act(float x) { return 1.0f - 2.0f / (exp_approx(2.0f * x) + 1.0f); }
inline double sigmoid(double x) { return 1.0 / (1.0 + std::exp(-x)); }
inline double tanh_act(double x) { return std::tanh(x); }

// f(b) for every batch row b, split over torch's threads.
template <typename F>
void for_rows(int64_t rows, int64_t cols, const F& f) {
  // Small steps run inline: waking the thread pool costs more than the loop. From 4096 elements a thread
  // on: at B=16, H=128 (8 rows of 512 gate columns a thread) the forward and the backward of T=1000 took
  // 9-10% less time on 2 threads of this project's AMD CPU than with 16384, where one thread ran each
  // pass while the other waited; B=64 at H=128 and H=512 unchanged.
  const int64_t grain = std::max<int64_t>(1, 4096 / std::max<int64_t>(cols, 1));
  at::parallel_for(0, rows, grain, [&](int64_t begin, int64_t end) {
    for (int64_t b = begin; b < end; ++b) f(b);
  });
}

}  // namespace fused_lstm
