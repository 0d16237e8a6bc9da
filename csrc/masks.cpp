// Bit-mask ops: pack_mask / unpack_mask (bit j of byte i = element 8i+j) and mask_distances (threshold,
// pack, Hamming distances to the history rows and static-run update in one pass).
#include <cstring>

#include "common.h"
#include "ops.h"

static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__, "the bit tricks below assume little endian");

namespace sparseticket {
namespace {

// Eight 0/1 bytes -> one byte, byte j giving bit j (the multiply gathers them in the top byte).
C10_ALWAYS_INLINE uint8_t pack8(const uint8_t* bytes) {
  uint64_t word;
  std::memcpy(&word, bytes, 8);
  return static_cast<uint8_t>((word * 0x0102040810204080ull) >> 56);
}

// One byte -> eight 0/1 bytes, byte j holding bit j.
C10_ALWAYS_INLINE uint64_t unpack8(uint8_t byte) {
  const uint64_t spread = (byte * 0x0101010101010101ull) & 0x8040201008040201ull;
  return ((spread + 0x7F7F7F7F7F7F7F7Full) >> 7) & 0x0101010101010101ull;
}

// mask_distances on 64-element groups: group g packs into bytes [8g, 8g+8) of `packed`.
template <typename T>
struct DistanceGroups {
  const T* importance;
  float threshold;
  const uint8_t* history;  // [rows, row_bytes]
  int64_t rows, row_bytes;
  uint8_t* packed;
  int32_t* runs;  // nullptr when static_runs is not given

  // Group g holding `size` (<= 64) elements; adds the differing bits per history row to `distance`.
  C10_ALWAYS_INLINE void operator()(int64_t g, int64_t size, int64_t* __restrict distance) const {
    const int64_t base = g * 64, bytes = (size + 7) / 8;
    const T* __restrict x = importance + base;
    uint8_t bits[64] = {};
    for (int64_t j = 0; j < size; ++j) bits[j] = static_cast<float>(x[j]) > threshold;
    uint64_t word = 0;
    for (int b = 0; b < 8; ++b) word |= static_cast<uint64_t>(pack8(bits + 8 * b)) << (8 * b);
    std::memcpy(packed + 8 * g, &word, bytes);
    uint64_t newest = 0;
    for (int64_t k = 0; k < rows; ++k) {
      newest = 0;
      std::memcpy(&newest, history + k * row_bytes + 8 * g, bytes);
      distance[k] += __builtin_popcountll(word ^ newest);
    }
    if (runs == nullptr) return;
    const uint64_t same = rows > 0 ? ~(word ^ newest) : 0;
    uint8_t keep[64];
    for (int b = 0; b < 8; ++b) {
      const uint64_t spread = unpack8(static_cast<uint8_t>(same >> (8 * b)));
      std::memcpy(keep + 8 * b, &spread, 8);
    }
    int32_t* __restrict run = runs + base;
    for (int64_t j = 0; j < size; ++j) run[j] = keep[j] ? run[j] + 1 : 0;
  }
};

}  // namespace

at::Tensor pack_mask(const at::Tensor& mask) {
  check_input(mask, "mask", at::kBool);
  const int64_t count = mask.numel(), full = count / 8;
  auto packed = at::empty({(count + 7) / 8}, mask.options().dtype(at::kByte));
  const uint8_t* in = bool_data(mask);
  uint8_t* out = packed.data_ptr<uint8_t>();
  at::parallel_for(0, full, kGrain / 8, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) out[i] = pack8(in + 8 * i);
  });
  if (full * 8 < count) {
    uint8_t tail[8] = {};
    std::memcpy(tail, in + 8 * full, count - 8 * full);
    out[full] = pack8(tail);
  }
  return packed;
}

at::Tensor unpack_mask(const at::Tensor& packed, int64_t count) {
  check_input(packed, "packed", at::kByte);
  TORCH_CHECK(count >= 0 && packed.numel() >= (count + 7) / 8, "unpack_mask: packed holds fewer than ", count,
              " bits");
  const int64_t full = count / 8;
  auto mask = at::empty({count}, packed.options().dtype(at::kBool));
  const uint8_t* in = packed.data_ptr<uint8_t>();
  auto* out = reinterpret_cast<uint8_t*>(mask.data_ptr<bool>());
  at::parallel_for(0, full, kGrain / 8, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      const uint64_t bytes = unpack8(in[i]);
      std::memcpy(out + 8 * i, &bytes, 8);
    }
  });
  if (full * 8 < count) {
    const uint64_t bytes = unpack8(in[full]);
    std::memcpy(out + 8 * full, &bytes, count - 8 * full);
  }
  return mask;
}

std::tuple<at::Tensor, at::Tensor> mask_distances(const at::Tensor& importance, const at::Tensor& threshold,
                                                  const at::Tensor& history,
                                                  const std::optional<at::Tensor>& static_runs) {
  check_input(importance, "importance");
  check_input(history, "history", at::kByte);
  TORCH_CHECK(threshold.numel() == 1, "mask_distances: threshold must hold one value");
  const int64_t count = importance.numel(), bytes = (count + 7) / 8;
  TORCH_CHECK(history.dim() == 2, "mask_distances: history must be 2-D [K, ceil(N/8)]");
  const int64_t rows = history.size(0);
  TORCH_CHECK(rows == 0 || history.size(1) == bytes, "mask_distances: history rows must hold ", bytes, " bytes");
  int32_t* runs = nullptr;
  if (static_runs.has_value()) {
    check_input(*static_runs, "static_runs", at::kInt);
    TORCH_CHECK(static_runs->numel() == count, "mask_distances: static_runs must have one entry per element");
    runs = static_runs->data_ptr<int32_t>();
  }
  const float cut = threshold.to(at::kFloat).item<float>();
  auto packed = at::empty({bytes}, importance.options().dtype(at::kByte));
  auto counts = at::zeros({rows}, importance.options().dtype(at::kLong));

  const int64_t full = count / 64, groups = (count + 63) / 64;
  const int64_t blocks = num_blocks(groups, kGrain / 64);
  std::vector<int64_t> partial(blocks * rows, 0);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, importance.scalar_type(), "mask_distances", [&] {
    const DistanceGroups<scalar_t> group{importance.data_ptr<scalar_t>(), cut, history.data_ptr<uint8_t>(),
                                         rows, bytes, packed.data_ptr<uint8_t>(), runs};
    parallel_blocks(groups, blocks, [&](int64_t block, int64_t begin, int64_t end) {
      int64_t* distance = partial.data() + block * rows;
      for (int64_t g = begin; g < std::min(end, full); ++g) group(g, 64, distance);
      if (end > full) group(full, count - 64 * full, distance);  // the last, partial group
    });
  });
  int64_t* total = counts.data_ptr<int64_t>();
  for (int64_t block = 0; block < blocks; ++block) {
    for (int64_t k = 0; k < rows; ++k) total[k] += partial[block * rows + k];
  }
  return {packed, counts};
}

}  // namespace sparseticket
