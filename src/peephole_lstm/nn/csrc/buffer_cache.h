// The kernel's big internal buffers, kept for its next call instead of freed (why: buffer_cache.cpp).
#pragma once

#include <ATen/core/Tensor.h>

#include <cstddef>

namespace fused_lstm {

// An uninitialised tensor for the kernel's own use: from the cache when 1 MB or more, else at::empty.
// Never for tensors handed to the user as results they may keep (outputs, final states).
at::Tensor workspace(at::IntArrayRef sizes, const at::TensorOptions& options);

// Frees the cached blocks not in use (fused.empty_cache()); returns how many bytes.
size_t release_cached_buffers();

// Bytes of cached blocks not in use.
size_t cached_buffer_bytes();

}  // namespace fused_lstm
