// truncate_grads_: g <- (g + l1*sign(p)) * (keep ? 1 : scale) in fp32, in place, over a list of
// tensors in one parallel region (the flat concatenation of the list is split evenly).
#include "common.h"
#include "ops.h"

namespace sparseticket {
namespace {

// g[i] <- (g[i] + l1*sign(p[i])) * factor; the L1 term only when kL1 (so that -0.0 stays -0.0).
template <typename G, typename P, bool kL1>
C10_ALWAYS_INLINE void update(G* __restrict g, const P* __restrict p, int64_t i, float factor, float l1) {
  float value = static_cast<float>(g[i]);
  if constexpr (kL1) {
    const float x = static_cast<float>(p[i]);
    value = value + l1 * static_cast<float>((0.f < x) - (x < 0.f));  // sign(NaN) = 0, as torch.sign
  }
  g[i] = static_cast<G>(value * factor);
}

// Elements [begin, end) of one tensor, with `inner` consecutive elements per keep entry.
template <typename G, typename P, bool kL1>
void truncate_range(G* __restrict g, const P* __restrict p, const uint8_t* __restrict keep, int64_t inner,
                    int64_t begin, int64_t end, float scale, float l1) {
  if (inner == 1) {
    for (int64_t i = begin; i < end; ++i) update<G, P, kL1>(g, p, i, keep[i] ? 1.f : scale, l1);
    return;
  }
  for (int64_t i = begin; i < end;) {
    const int64_t entry = i / inner;
    const int64_t stop = std::min(end, (entry + 1) * inner);
    const float factor = keep[entry] ? 1.f : scale;
    for (; i < stop; ++i) update<G, P, kL1>(g, p, i, factor, l1);
  }
}

template <typename G, typename P, bool kL1>
void truncate_list(at::TensorList grads, at::TensorList keep, at::TensorList params, float scale, float l1) {
  const auto offsets = flat_offsets(grads);
  const auto g = data_pointers<G>(grads);
  std::vector<const uint8_t*> k;
  for (const auto& tensor : keep) k.push_back(bool_data(tensor));
  const auto p = kL1 ? data_pointers<const P>(params) : std::vector<const P*>(grads.size(), nullptr);
  std::vector<int64_t> inner(grads.size(), 1);
  for (size_t i = 0; i < grads.size(); ++i) {
    if (grads[i].numel() > 0) inner[i] = grads[i].numel() / keep[i].numel();
  }
  at::parallel_for(0, offsets.back(), kGrain, [&](int64_t begin, int64_t end) {
    for_each_piece(offsets, begin, end, [&](int64_t t, int64_t lo, int64_t hi) {
      truncate_range<G, P, kL1>(g[t], p[t], k[t], inner[t], lo, hi, scale, l1);
    });
  });
}

}  // namespace

void truncate_grads_(at::TensorList grads, at::TensorList keep, at::TensorList params, double scale, double l1) {
  const bool use_l1 = l1 != 0.0;
  TORCH_CHECK(keep.size() == grads.size(), "truncate_grads_: keep must have one tensor per grad");
  TORCH_CHECK(!use_l1 || params.size() == grads.size(), "truncate_grads_: params must have one tensor per grad");
  if (grads.empty()) return;
  for (size_t i = 0; i < grads.size(); ++i) {
    check_input(grads[i], "grads");
    check_input(keep[i], "keep", at::kBool);
    TORCH_CHECK(grads[i].scalar_type() == grads[0].scalar_type(), "truncate_grads_: grads must share one dtype");
    const int64_t n = grads[i].numel();
    TORCH_CHECK(n == 0 || (keep[i].numel() > 0 && n % keep[i].numel() == 0),
                "truncate_grads_: keep[", i, "] size must divide the grad's size");
    if (use_l1) {
      check_input(params[i], "params");
      TORCH_CHECK(params[i].scalar_type() == params[0].scalar_type(), "truncate_grads_: params must share one dtype");
      TORCH_CHECK(params[i].numel() == n, "truncate_grads_: params[", i, "] must have the grad's size");
    }
  }
  const float fscale = static_cast<float>(scale), fl1 = static_cast<float>(l1);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grads[0].scalar_type(), "truncate_grads_", [&] {
    using G = scalar_t;
    if (!use_l1) return truncate_list<G, float, false>(grads, keep, params, fscale, fl1);
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, params[0].scalar_type(), "truncate_grads_", [&] {
      truncate_list<G, scalar_t, true>(grads, keep, params, fscale, fl1);
    });
  });
}

}  // namespace sparseticket
