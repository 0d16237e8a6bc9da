// Shared helpers of the CPU kernels: input checks and the splitting of (multi-tensor) flat ranges
// into parallel work.
#pragma once

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <sstream>
#include <string>
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

// The dtype as Python prints it without "torch." (float32, bfloat16, int64...).
inline std::string dtype_name(at::ScalarType dtype) {
  switch (dtype) {
    case at::kFloat: return "float32";
    case at::kHalf: return "float16";
    case at::kBFloat16: return "bfloat16";
    case at::kDouble: return "float64";
    case at::kBool: return "bool";
    case at::kByte: return "uint8";
    case at::kChar: return "int8";
    case at::kShort: return "int16";
    case at::kInt: return "int32";
    case at::kLong: return "int64";
    default: return c10::toString(dtype);
  }
}

// "float32 on cpu", as the Python checks describe a tensor.
inline std::string describe(const at::Tensor& tensor) {
  std::ostringstream out;
  out << dtype_name(tensor.scalar_type()) << " on " << tensor.device();
  return out.str();
}

// "(4, 3)", as Python prints a shape tuple.
inline std::string shape_string(at::IntArrayRef sizes) {
  std::ostringstream out;
  out << "(";
  for (size_t i = 0; i < sizes.size(); ++i) out << (i ? ", " : "") << sizes[i];
  out << (sizes.size() == 1 ? ",)" : ")");
  return out.str();
}

inline bool is_kernel_float(at::ScalarType dtype) {
  return dtype == at::kFloat || dtype == at::kHalf || dtype == at::kBFloat16;
}

// TypeError unless `tensor` is float32/float16/bfloat16 on `device`; `name...` are the parts of its name.
template <typename... Name>
void check_float_on(at::Device device, const at::Tensor& tensor, const Name&... name) {
  TORCH_CHECK_TYPE(is_kernel_float(tensor.scalar_type()) && tensor.device() == device, name...,
                   " must be float32/float16/bfloat16 on ", device, ", got ", describe(tensor));
}

// A bool tensor's bytes (0 or 1), as uint8 so that loops over them vectorise.
inline const uint8_t* bool_data(const at::Tensor& tensor) {
  return reinterpret_cast<const uint8_t*>(tensor.data_ptr<bool>());
}

// The order in which a tensor lays out its elements in memory, when a kernel may read and write it as
// one flat range: row-major, or channels_last(_3d) (dim 0, the output channels, is still outermost, so
// per-channel masks stay valid). A tensor in both row-major and channels_last order (size-1 dims) is
// row-major: two tensors of one shape then compare equal exactly when their element orders agree.
enum class MemoryOrder : int8_t { kStrided = -1, kRowMajor = 0, kChannelsLast = 1, kChannelsLast3d = 2 };

inline MemoryOrder memory_order(const at::Tensor& tensor) {
  if (tensor.is_contiguous()) return MemoryOrder::kRowMajor;
  if (tensor.is_contiguous(at::MemoryFormat::ChannelsLast)) return MemoryOrder::kChannelsLast;
  if (tensor.is_contiguous(at::MemoryFormat::ChannelsLast3d)) return MemoryOrder::kChannelsLast3d;
  return MemoryOrder::kStrided;
}

// Whether a kernel may treat the tensor's memory as its flat element range.
inline bool flat_dense(const at::Tensor& tensor) { return memory_order(tensor) != MemoryOrder::kStrided; }

// Whether two tensors of one shape are both flat-dense with their elements in the same order.
inline bool same_order(const at::Tensor& tensor, const at::Tensor& like) {
  const auto order = memory_order(tensor);
  return order != MemoryOrder::kStrided && order == memory_order(like);
}

// A read-only input (like's shape, or flat with like's numel in row-major order) laid out in like's
// memory order: the tensor itself when it already is (no copy), else a copy.
inline at::Tensor in_order_of(const at::Tensor& tensor, const at::Tensor& like) {
  if (tensor.sizes() == like.sizes() && same_order(tensor, like)) return tensor;
  if (like.is_contiguous()) return tensor.contiguous();
  return at::empty_like(like, tensor.options()).copy_(tensor.reshape(like.sizes()));
}

// For element-wise kernels over tensors of one shape: CPU, flat-dense, in `like`'s memory order.
inline void check_input_like(const at::Tensor& tensor, const char* name, const at::Tensor& like) {
  TORCH_CHECK(tensor.device().is_cpu(), name, " must be a CPU tensor");
  TORCH_CHECK(tensor.sizes() == like.sizes() && same_order(tensor, like), name,
              " must have the shape and memory order (contiguous or channels_last) of the weight");
}

// An output like `like` (shape, dtype, device) in `slot`'s memory when nothing but `slot` references
// that memory (the previous step's graph is gone), else a fresh tensor. The result is a new tensor on
// the slot's storage, not a view of it: while it lives, the memory counts as in use. Hot paths that
// recompute the same weight-sized tensor every step use it to avoid a fresh (page-faulting) allocation.
inline at::Tensor reuse_or_allocate(const at::Tensor& slot, const at::Tensor& like) {
  const bool reusable = slot.sizes() == like.sizes() && slot.scalar_type() == like.scalar_type() &&
                        same_order(slot, like) && slot.device() == like.device() && slot.storage().use_count() == 1;
  if (!reusable) return at::empty_like(like);  // like's memory order (row-major or channels_last)
  auto out = at::empty({0}, like.options());
  out.set_(slot.storage(), slot.storage_offset(), like.sizes(), slot.strides());
  return out;
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
