// kth_value: exact k-th smallest element over a list of tensors, NaN last, without concatenating:
// a two-pass radix select (top 16 bits, then low 16 bits) on order-preserving uint32 keys of the
// fp32 values, with per-block histograms. digit_histogram is one 8-bit histogram pass over the
// same keys, for selections whose histograms are summed across ranks (sharded_kth_value).
#include <ATen/Dispatch_v2.h>

#include <cstring>

#include "common.h"
#include "ops.h"

namespace sparseticket {
namespace {

constexpr int64_t kBins = 1 << 16;

// Unsigned key with the order of the float (every NaN last, as torch.sort).
C10_ALWAYS_INLINE uint32_t order_key(float value) {
  uint32_t bits;
  std::memcpy(&bits, &value, 4);
  const uint32_t flip = static_cast<uint32_t>(static_cast<int32_t>(bits) >> 31) | 0x80000000u;
  return value != value ? 0xFFFFFFFFu : bits ^ flip;
}

float key_value(uint32_t key) {
  const uint32_t bits = (key & 0x80000000u) ? key ^ 0x80000000u : ~key;
  float value;
  std::memcpy(&value, &bits, 4);
  return value;
}

template <typename T>
float kth_key_value(at::TensorList values, int64_t k) {
  const auto offsets = flat_offsets(values);
  const auto data = data_pointers<const T>(values);
  const int64_t total = offsets.back();

  if (total <= kGrain) {  // small: selecting on a copy of the keys is cheaper than two histograms
    std::vector<uint32_t> keys;
    keys.reserve(total);
    for_each_piece(offsets, 0, total, [&](int64_t t, int64_t lo, int64_t hi) {
      for (int64_t i = lo; i < hi; ++i) keys.push_back(order_key(static_cast<float>(data[t][i])));
    });
    std::nth_element(keys.begin(), keys.begin() + k, keys.end());
    return key_value(keys[k]);
  }

  const int64_t blocks = num_blocks(total, kGrain);
  std::vector<int64_t> histograms(blocks * kBins);
  // Histograms the keys through add(histogram, key), then returns the bin holding rank k and makes
  // k the rank within that bin.
  auto select_bin = [&](auto add) -> uint32_t {
    std::fill(histograms.begin(), histograms.end(), 0);
    parallel_blocks(total, blocks, [&](int64_t block, int64_t begin, int64_t end) {
      int64_t* histogram = histograms.data() + block * kBins;
      for_each_piece(offsets, begin, end, [&](int64_t t, int64_t lo, int64_t hi) {
        const T* __restrict x = data[t];
        uint32_t keys[256];
        for (int64_t start = lo; start < hi; start += 256) {
          const int64_t size = std::min<int64_t>(256, hi - start);
          for (int64_t i = 0; i < size; ++i) keys[i] = order_key(static_cast<float>(x[start + i]));
          for (int64_t i = 0; i < size; ++i) add(histogram, keys[i]);
        }
      });
    });
    for (int64_t bin = 0; bin < kBins; ++bin) {
      int64_t in_bin = 0;
      for (int64_t block = 0; block < blocks; ++block) in_bin += histograms[block * kBins + bin];
      if (k < in_bin) return static_cast<uint32_t>(bin);
      k -= in_bin;
    }
    TORCH_INTERNAL_ASSERT(false, "kth_value: rank not found");
  };
  const uint32_t high = select_bin([](int64_t* __restrict histogram, uint32_t key) { ++histogram[key >> 16]; });
  const uint32_t low = select_bin([high](int64_t* __restrict histogram, uint32_t key) {
    if ((key >> 16) == high) ++histogram[key & 0xFFFF];
  });
  return key_value(high << 16 | low);
}

// Counts of the 8-bit digit (key >> shift) & 255 over the elements whose higher digits equal
// `prefix` (all elements when shift == 24), with per-block histograms summed at the end.
template <typename T>
void digit_counts(at::TensorList values, int64_t shift, uint32_t prefix, int64_t* out) {
  const auto offsets = flat_offsets(values);
  const auto data = data_pointers<const T>(values);
  const int64_t total = offsets.back();
  const int64_t blocks = num_blocks(total, kGrain);
  constexpr int64_t kSlots = 512;  // 256 digits, then 256 slots for the elements outside the prefix
  std::vector<int64_t> histograms(blocks * kSlots, 0);
  parallel_blocks(total, blocks, [&](int64_t block, int64_t begin, int64_t end) {
    int64_t* __restrict histogram = histograms.data() + block * kSlots;
    for_each_piece(offsets, begin, end, [&](int64_t t, int64_t lo, int64_t hi) {
      const T* __restrict x = data[t];
      if (shift == 24) {
        for (int64_t i = lo; i < hi; ++i) ++histogram[order_key(static_cast<float>(x[i])) >> 24];
      } else {
        for (int64_t i = lo; i < hi; ++i) {  // branch-free: a prefix often matches about half the data
          const uint32_t key = order_key(static_cast<float>(x[i]));
          const uint32_t outside = (key >> (shift + 8)) != prefix;
          ++histogram[((key >> shift) & 0xFF) | (outside << 8)];
        }
      }
    });
  });
  for (int64_t block = 0; block < blocks; ++block) {
    for (int64_t bin = 0; bin < 256; ++bin) out[bin] += histograms[block * kSlots + bin];
  }
}

}  // namespace

at::Tensor digit_histogram(at::TensorList values, int64_t shift, int64_t prefix) {
  TORCH_CHECK(!values.empty(), "digit_histogram: values must not be empty");
  TORCH_CHECK(shift == 0 || shift == 8 || shift == 16 || shift == 24,
              "digit_histogram: shift must be 0, 8, 16 or 24, got ", shift);
  TORCH_CHECK(prefix >= 0 && prefix < (int64_t{1} << (24 - shift)),
              "digit_histogram: prefix ", prefix, " out of range for shift ", shift);
  for (const auto& tensor : values) {
    check_input(tensor, "values");
    TORCH_CHECK(tensor.scalar_type() == values[0].scalar_type(), "digit_histogram: values must share one dtype");
  }
  auto result = at::zeros({256}, values[0].options().dtype(at::kLong));
  AT_DISPATCH_V2(values[0].scalar_type(), "digit_histogram", AT_WRAP([&] {
    digit_counts<scalar_t>(values, shift, static_cast<uint32_t>(prefix), result.data_ptr<int64_t>());
  }), at::kFloat, at::kHalf, at::kBFloat16);
  return result;
}

at::Tensor kth_value(at::TensorList values, int64_t k) {
  TORCH_CHECK(!values.empty(), "kth_value: values must not be empty");
  int64_t total = 0;
  for (const auto& tensor : values) {
    check_input(tensor, "values");
    TORCH_CHECK(tensor.scalar_type() == values[0].scalar_type(), "kth_value: values must share one dtype");
    total += tensor.numel();
  }
  TORCH_CHECK(k >= 0 && k < total, "kth_value: k=", k, " out of range for ", total, " elements");
  auto result = at::empty({}, values[0].options());
  AT_DISPATCH_V2(values[0].scalar_type(), "kth_value", AT_WRAP([&] {
    *result.data_ptr<scalar_t>() = static_cast<scalar_t>(kth_key_value<scalar_t>(values, k));
  }), at::kFloat, at::kHalf, at::kBFloat16);
  return result;
}

}  // namespace sparseticket
