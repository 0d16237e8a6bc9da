// Shared helpers of the CPU kernels: input checks and the splitting of (multi-tensor) flat ranges
// into parallel work.
#pragma once

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <vector>

namespace sparseticket {

// Elements per parallel task: below this, splitting costs more than it gains.
constexpr int64_t kGrain = 32768;

inline void check_input(const at::Tensor& tensor, const char* name) {
  TORCH_CHECK(tensor.device().is_cpu(), name, " must be a CPU tensor");
  TORCH_CHECK(tensor.is_contiguous(), name, " must be contiguous");
}

inline void check_input(const at::Tensor& tensor, const char* name, at::ScalarType dtype) {
  check_input(tensor, name);
  TORCH_CHECK(tensor.scalar_type() == dtype, name, " must be ", dtype, ", got ", tensor.scalar_type());
}

// A bool tensor's bytes (0 or 1), as uint8 so that loops over them vectorise.
inline const uint8_t* bool_data(const at::Tensor& tensor) {
  return reinterpret_cast<const uint8_t*>(tensor.data_ptr<bool>());
}

// Number of blocks to split `total` work units into: at most one per thread, each >= `grain` units.
inline int64_t num_blocks(int64_t total, int64_t grain) {
  return std::clamp<int64_t>(total / grain, 1, at::get_num_threads());
}

// Runs f(block, begin, end) on `blocks` even contiguous parts of [0, total), in one parallel region.
// Each block may own per-block scratch (partial counts, histograms).
template <typename F>
void parallel_blocks(int64_t total, int64_t blocks, const F& f) {
  at::parallel_for(0, blocks, 1, [&](int64_t first, int64_t last) {
    for (int64_t block = first; block < last; ++block) {
      f(block, total * block / blocks, total * (block + 1) / blocks);
    }
  });
}

// Start of each tensor in the flat concatenation of `tensors`, then the total element count.
inline std::vector<int64_t> flat_offsets(at::TensorList tensors) {
  std::vector<int64_t> offsets(tensors.size() + 1, 0);
  for (size_t i = 0; i < tensors.size(); ++i) offsets[i + 1] = offsets[i] + tensors[i].numel();
  return offsets;
}

// Calls f(tensor, begin, end) with tensor-local bounds for each non-empty piece of the flat range
// [begin, end) of the concatenation described by `offsets`.
template <typename F>
inline void for_each_piece(const std::vector<int64_t>& offsets, int64_t begin, int64_t end, const F& f) {
  int64_t tensor = std::upper_bound(offsets.begin(), offsets.end(), begin) - offsets.begin() - 1;
  for (; begin < end; ++tensor) {
    const int64_t stop = std::min(end, offsets[tensor + 1]);
    if (stop > begin) f(tensor, begin - offsets[tensor], stop - offsets[tensor]);
    begin = stop;
  }
}

// Typed data pointers of a tensor list.
template <typename T>
std::vector<T*> data_pointers(at::TensorList tensors) {
  std::vector<T*> pointers;
  pointers.reserve(tensors.size());
  for (const auto& tensor : tensors) pointers.push_back(tensor.data_ptr<std::remove_const_t<T>>());
  return pointers;
}

}  // namespace sparseticket
