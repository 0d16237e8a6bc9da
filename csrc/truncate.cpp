// truncate_grads_: g <- (g + l1*sign(p)) * (keep ? 1 : scale) in fp32, in place, over a list of
// tensors in one parallel region (the flat concatenation of the list is split evenly).
#include "aliasing.h"
#include "common.h"
#include "ops.h"

namespace sparseticket {
namespace {

// g[i] <- g[i] + l1*sign(p[i]) where kept, else that times scale; the L1 term only when kL1 (so
// that -0.0 stays -0.0). Dropped with scale 0 is exactly 0, chosen by a select (inf * 0 is NaN);
// otherwise NaN and inf propagate as the math says.
template <typename G, typename P, bool kL1>
C10_ALWAYS_INLINE void update(G* __restrict g, const P* __restrict p, int64_t i, bool kept, float scale, float l1) {
  float value = static_cast<float>(g[i]);
  if constexpr (kL1) {
    const float x = static_cast<float>(p[i]);
    value = value + l1 * static_cast<float>((0.f < x) - (x < 0.f));  // sign(NaN) = 0, as torch.sign
  }
  const float dropped = scale == 0.f ? 0.f : value * scale;
  g[i] = static_cast<G>(kept ? value : dropped);
}

// Elements [begin, end) of one tensor, with `inner` consecutive elements per keep entry.
template <typename G, typename P, bool kL1>
void truncate_range(G* __restrict g, const P* __restrict p, const uint8_t* __restrict keep, int64_t inner,
                    int64_t begin, int64_t end, float scale, float l1) {
  if (inner == 1) {
    for (int64_t i = begin; i < end; ++i) update<G, P, kL1>(g, p, i, keep[i] != 0, scale, l1);
    return;
  }
  for (int64_t i = begin; i < end;) {
    const int64_t entry = i / inner;
    const int64_t stop = std::min(end, (entry + 1) * inner);
    const bool kept = keep[entry] != 0;
    for (; i < stop; ++i) update<G, P, kL1>(g, p, i, kept, scale, l1);
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

void truncate_grads_(at::TensorList grads, at::TensorList keep_in, at::TensorList params_in, double scale,
                     double l1) {
  // The op's contract (sparseticket/ops/_contracts.py), checked here in C++ because this op runs on
  // every training step over every layer: the same errors, argument by argument, at a fraction of the
  // cost of Python checks. Read-only inputs not laid out like their gradient (contiguous or channels_last) are read
  // through copies in the gradient's memory order.
  TORCH_CHECK_VALUE(std::isfinite(scale), "scale must be finite, got ", scale);
  TORCH_CHECK_VALUE(std::isfinite(l1), "l1 must be finite, got ", l1);
  const bool use_l1 = l1 != 0.0;
  const size_t count = grads.size();
  TORCH_CHECK_VALUE(keep_in.size() == count, "keep must have one mask per gradient: got ", keep_in.size(),
                    " masks for ", count, " grads");
  TORCH_CHECK_VALUE(!use_l1 || count == 0 || !params_in.empty(),
                    "l1 != 0 requires params (the tensors whose sign is added to grads)");
  TORCH_CHECK_VALUE(params_in.empty() || params_in.size() == count, "params must have one tensor per gradient: got ",
                    params_in.size(), " for ", count, " grads");
  if (count == 0) return;
  const auto device = grads[0].device();
  TORCH_CHECK_TYPE(is_kernel_float(grads[0].scalar_type()), "grads[0] must be float32/float16/bfloat16, got ",
                   describe(grads[0]));
  const auto grad_dtype = grads[0].scalar_type();
  std::vector<at::Tensor> keep, params;
  keep.reserve(count);
  for (size_t i = 0; i < count; ++i) {
    const at::Tensor& grad = grads[i];
    const at::Tensor& mask = keep_in[i];
    if (grad.scalar_type() != grad_dtype || grad.device() != device) {
      check_float_on(device, grad, "grads[", i, "]");
      TORCH_CHECK_TYPE(false, "grads must all have one dtype: grads[0] is ", dtype_name(grad_dtype), ", grads[", i,
                       "] is ", dtype_name(grad.scalar_type()));
    }
    TORCH_CHECK_VALUE(flat_dense(grad), "grads[", i, "] must be contiguous or channels_last (it is updated in "
                      "place); call .contiguous() on it first");
    TORCH_CHECK_TYPE(mask.scalar_type() == at::kBool && mask.device() == device, "keep[", i, "] must be bool on ",
                     device, ", got ", describe(mask));
    const bool per_element = mask.sizes() == grad.sizes() || (mask.dim() == 1 && mask.numel() == grad.numel());
    const bool per_channel = mask.dim() == 1 && grad.dim() >= 1 && mask.size(0) == grad.size(0);
    TORCH_CHECK_VALUE(per_element || per_channel, "keep[", i, "] must have shape ",
                      grad.dim() >= 2 ? "(" + std::to_string(grad.size(0)) + ",) or " : std::string(),
                      shape_string(grad.sizes()), " (per channel or per element of grads[", i, "]), got ",
                      shape_string(mask.sizes()));
    keep.push_back(per_element ? in_order_of(mask, grad) : mask.contiguous());  // read in grad's memory order
  }
  if (!params_in.empty()) {
    check_float_on(device, params_in[0], "params[0]");
    const auto param_dtype = params_in[0].scalar_type();
    params.reserve(count);
    for (size_t i = 0; i < count; ++i) {
      const at::Tensor& param = params_in[i];
      if (param.scalar_type() != param_dtype || param.device() != device) {
        check_float_on(device, param, "params[", i, "]");
        TORCH_CHECK_TYPE(false, "params must all have one dtype: params[0] is ", dtype_name(param_dtype),
                         ", params[", i, "] is ", dtype_name(param.scalar_type()));
      }
      TORCH_CHECK_VALUE(param.sizes() == grads[i].sizes(), "params[", i, "] must have the shape of grads[", i, "] ",
                        shape_string(grads[i].sizes()), ", got ", shape_string(param.sizes()));
      params.push_back(in_order_of(param, grads[i]));
    }
  }
  TORCH_CHECK_VALUE(device.is_cpu(), "grads must be CPU tensors for the C++ kernels, got ", device);
  check_no_aliasing({{"grads", grads, true}, {"keep", keep_in, false}, {"params", params_in, false}});
  truncate_grads_unchecked(grads, keep, params, scale, l1);
}

void truncate_grads_unchecked(at::TensorList grads, at::TensorList keep, at::TensorList params, double scale,
                              double l1) {
  if (grads.empty()) return;
  const float fscale = static_cast<float>(scale), fl1 = static_cast<float>(l1);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grads[0].scalar_type(), "truncate_grads_", [&] {
    using G = scalar_t;
    if (l1 == 0.0) return truncate_list<G, float, false>(grads, keep, params, fscale, fl1);
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, params[0].scalar_type(), "truncate_grads_", [&] {
      truncate_list<G, scalar_t, true>(grads, keep, params, fscale, fl1);
    });
  });
}

}  // namespace sparseticket
