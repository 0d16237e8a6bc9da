// Refuse in-place outputs that share memory with another argument (the contract's check_no_aliasing,
// sparseticket/ops/_contracts.py, in C++ for the ops that check their contract here): a kernel would
// read values it already overwrote. The byte spans of every non-empty tensor (storage, first byte, end)
// are sorted and swept once, O(n log n), so a step over hundreds of tensors pays microseconds.
#pragma once

#include <algorithm>
#include <cstdint>
#include <string>
#include <tuple>
#include <vector>

#include <ATen/ATen.h>

namespace sparseticket {

struct NamedList {
  const char* name;
  at::TensorList tensors;
  bool written;  // updated in place
};

inline void check_no_aliasing(std::initializer_list<NamedList> lists) {
  // (storage, first byte, end byte, written, list index, tensor index)
  std::vector<std::tuple<const void*, int64_t, int64_t, bool, size_t, size_t>> spans;
  std::vector<const char*> names;
  for (const auto& list : lists) {
    for (size_t i = 0; i < list.tensors.size(); ++i) {
      const at::Tensor& tensor = list.tensors[i];
      if (!tensor.defined() || tensor.numel() == 0) continue;
      int64_t last = 0;
      for (int64_t d = 0; d < tensor.dim(); ++d) last += (tensor.size(d) - 1) * tensor.stride(d);
      const int64_t start = tensor.storage_offset() * tensor.element_size();
      spans.emplace_back(tensor.storage().data(), start, start + (last + 1) * tensor.element_size(), list.written,
                         names.size(), i);
    }
    names.push_back(list.name);
  }
  std::sort(spans.begin(), spans.end());
  const void* storage = nullptr;
  int64_t end_all = 0, end_written = 0;  // the furthest end so far on this storage: of any span, of written ones
  size_t owner_all = 0, owner_written = 0;
  for (size_t k = 0; k < spans.size(); ++k) {
    const auto& [memory, start, end, written, list, index] = spans[k];
    if (memory != storage) {
      storage = memory;
      end_all = end_written = 0;
    } else {
      const bool hits_written = start < end_written;
      if (hits_written || (written && start < end_all)) {
        const auto& other = spans[hits_written ? owner_written : owner_all];
        const auto& out = hits_written ? other : spans[k];
        const auto& in = hits_written ? spans[k] : other;
        TORCH_CHECK_VALUE(false, names[std::get<4>(out)], "[", std::get<5>(out), "] must not share memory with ",
                          names[std::get<4>(in)], "[", std::get<5>(in), "] (", names[std::get<4>(out)], " is written "
                          "in place): pass separate tensors");
      }
    }
    if (end > end_all) end_all = end, owner_all = k;
    if (written && end > end_written) end_written = end, owner_written = k;
  }
}

}  // namespace sparseticket
