#include "buffer_cache.h"

#include <ATen/ATen.h>

#include <cstdlib>
#include <map>
#include <mutex>
#include <utility>
#ifdef __linux__
#include <sys/mman.h>
#endif

namespace fused_lstm {
namespace {

// Every training step allocates the same few large buffers (the gates and states of all steps, dZ);
// from malloc each is a fresh mmap region whose first touch page-faults, about 30 ms per 100 MB on this
// project's VM, a tenth of a large-shape training step. Blocks the kernel frees are kept for its next
// call instead, in huge pages where the OS allows. A request takes the smallest free block that fits
// and is at most twice its size, so that batches of varying sequence length reuse blocks too.
class BufferCache {
 public:
  static constexpr size_t kMinBytes = size_t{1} << 20;  // smaller ones stay with malloc's own reuse
  static constexpr size_t kAlign = size_t{2} << 20;     // one transparent huge page
  static constexpr size_t kMaxFreeBytes = size_t{1} << 30;

  static BufferCache& get() {
    static auto* cache = new BufferCache();  // never destroyed: tensors may outlive static destructors
    return *cache;
  }
  // A block of at least `bytes`: (address, its actual size).
  std::pair<void*, size_t> take(size_t bytes) {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      auto it = free_.lower_bound(bytes);
      if (it != free_.end() && it->first <= 2 * bytes) {
        const auto block = std::make_pair(it->second, it->first);
        free_.erase(it);
        free_bytes_ -= block.second;
        return block;
      }
    }
    void* block = nullptr;
    TORCH_CHECK(posix_memalign(&block, kAlign, bytes) == 0, "fused_lstm: out of memory allocating ", bytes,
                " bytes");
#ifdef __linux__
    madvise(block, bytes, MADV_HUGEPAGE);  // advice only: without THP this is a no-op
#endif
    return {block, bytes};
  }
  void give(void* block, size_t bytes) {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      if (free_bytes_ + bytes <= kMaxFreeBytes) {
        free_.emplace(bytes, block);
        free_bytes_ += bytes;
        return;
      }
    }
    std::free(block);
  }
  size_t release() {
    std::lock_guard<std::mutex> lock(mutex_);
    for (auto& [bytes, block] : free_) std::free(block);
    free_.clear();
    return std::exchange(free_bytes_, 0);
  }
  size_t free_bytes() {
    std::lock_guard<std::mutex> lock(mutex_);
    return free_bytes_;
  }

 private:
  std::mutex mutex_;
  std::multimap<size_t, void*> free_;  // size -> block
  size_t free_bytes_ = 0;
};

}  // namespace

at::Tensor workspace(at::IntArrayRef sizes, const at::TensorOptions& options) {
  const size_t bytes = c10::multiply_integers(sizes) * options.dtype().itemsize();
  if (bytes < BufferCache::kMinBytes) return at::empty(sizes, options);
  const size_t rounded = (bytes + BufferCache::kAlign - 1) / BufferCache::kAlign * BufferCache::kAlign;
  const auto [block, size] = BufferCache::get().take(rounded);
  return at::from_blob(block, sizes, [size = size](void* freed) { BufferCache::get().give(freed, size); }, options);
}

size_t release_cached_buffers() { return BufferCache::get().release(); }

size_t cached_buffer_bytes() { return BufferCache::get().free_bytes(); }

}  // namespace fused_lstm
