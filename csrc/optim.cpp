// masked_sgd_ and masked_adam_: one optimizer step over a list of parameters in one parallel region,
// with the pruned entries of each weight and of its optimizer state stored as exactly 0.
//
// The kept entries follow torch's own arithmetic, operation for operation and rounding for rounding, so
// that they equal torch.optim's: SGD as its for-loop/foreach step (each `add(x, alpha=a)` there is one
// fma, as ATen's vectorised add; `buf.mul_(m)` is rounded before the add), Adam/AdamW as torch's fused
// CPU step (fused=True: an fma in the weight decay of Adam, in the lerp and in the second moment, plain
// operations elsewhere, a correctly rounded sqrt). So this file is compiled without floating-point
// contraction: every fma is written as std::fma, and nothing else may be fused. The loops are plain
// element loops, one per combination of options (template parameters: no branch inside), that the
// compiler vectorises (-O3, -fno-math-errno); float16/bfloat16 compute in float32
// and round once per stored value.
//
// A mask is one bool byte per entry, or packed: one bit per entry (bit j of byte i is entry 8i+j, entries
// in the parameter's memory order), 1/8 byte per weight instead of 1. A packed mask is read a 32-bit word
// (32 entries) at a time: the inner loop over the word's entries takes entry j's bit with a shift, which
// vectorises as the byte loop does (one vector shift per vector of entries); only the entries before the
// first and after the last whole word of a thread's range read their bit one at a time.
#pragma GCC optimize("fp-contract=off")

#include <tuple>
#include <utility>

#include "aliasing.h"
#include "common.h"
#include "ops.h"

namespace sparseticket {
namespace {

struct SgdScalars {
  float neg_lr, weight_decay, momentum, one_minus_dampening, sign;  // sign: -1 to maximize
};

struct AdamScalars {
  float neg_step_size, beta2, exp_avg_coefficient, exp_avg_sq_coefficient, bias_correction2_sqrt, eps,
      weight_decay, decay_factor, sign;
};

enum class Momentum { kNone, kFirst, kBlend };  // no buffer; torch's first step (buffer = gradient); blending
enum class Decay { kNone, kCoupled, kDecoupled };  // no weight decay; Adam's (on the gradient); AdamW's
enum class MaskKind { kNone, kBytes, kBits };      // dense step; one bool byte per entry; packed, one bit per entry

constexpr int kWordBits = 32;  // entries per word of a packed mask read at once

// Entry i of a packed mask.
C10_ALWAYS_INLINE bool packed_bit(const uint8_t* __restrict bits, int64_t i) {
  return ((bits[i >> 3] >> (i & 7)) & 1) != 0;
}

// Entries [32 word, 32 word + 32) of a packed mask, entry 32 word + j at bit j (whatever the byte order).
C10_ALWAYS_INLINE uint32_t packed_word(const uint8_t* __restrict bits, int64_t word) {
  const uint8_t* bytes = bits + word * (kWordBits / 8);
  return uint32_t{bytes[0]} | uint32_t{bytes[1]} << 8 | uint32_t{bytes[2]} << 16 | uint32_t{bytes[3]} << 24;
}

// The whole words of [lo, hi): entries [first, last), first and last multiples of 32 (first = last = hi
// when there is none).
inline std::pair<int64_t, int64_t> whole_words(int64_t lo, int64_t hi) {
  const int64_t first = std::min(hi, (lo + kWordBits - 1) / kWordBits * kWordBits);
  return {first, std::max(first, hi / kWordBits * kWordBits)};
}

// One entry of the SGD step. Every option is a template parameter, so that the loops calling it have no
// branch and vectorise; the mask is a select (never a multiply: inf * 0 is NaN).
template <typename T, bool kMasked, bool kDecay, Momentum kMomentum, bool kNesterov>
C10_ALWAYS_INLINE void sgd_entry(T* __restrict p, const T* __restrict g, T* __restrict b, int64_t i, bool kept,
                                 const SgdScalars& s) {
  float param = static_cast<float>(p[i]);
  float grad = static_cast<float>(g[i]) * s.sign;
  if constexpr (kDecay) grad = std::fma(param, s.weight_decay, grad);  // grad.add(param, alpha=wd)
  float buffer = 0.f;
  if constexpr (kMomentum == Momentum::kFirst) buffer = grad;
  if constexpr (kMomentum == Momentum::kBlend) {
    const float decayed = static_cast<float>(b[i]) * s.momentum;  // buf.mul_(momentum), rounded
    buffer = std::fma(grad, s.one_minus_dampening, decayed);     // .add_(grad, alpha=1 - dampening)
  }
  if constexpr (kMomentum != Momentum::kNone) grad = kNesterov ? std::fma(buffer, s.momentum, grad) : buffer;
  param = std::fma(grad, s.neg_lr, param);  // param.add_(grad, alpha=-lr)
  if constexpr (kMasked) {
    param = kept ? param : 0.f;
    buffer = kept ? buffer : 0.f;
  }
  p[i] = static_cast<T>(param);
  if constexpr (kMomentum != Momentum::kNone) b[i] = static_cast<T>(buffer);
}

// Entries [lo, hi) of one tensor. (The loops over the mask are written out here and in adam_range: through
// a shared callable, gcc 12 no longer vectorises the word loop.)
template <typename T, MaskKind kMask, bool kDecay, Momentum kMomentum, bool kNesterov>
void sgd_range(T* __restrict p, const T* __restrict g, T* __restrict b, const uint8_t* __restrict keep, int64_t lo,
               int64_t hi, const SgdScalars s) {
  constexpr bool kMasked = kMask != MaskKind::kNone;
  if constexpr (kMask == MaskKind::kBits) {
    const auto [first, last] = whole_words(lo, hi);
    for (int64_t i = lo; i < first; ++i) {
      sgd_entry<T, true, kDecay, kMomentum, kNesterov>(p, g, b, i, packed_bit(keep, i), s);
    }
    for (int64_t word = first / kWordBits; word < last / kWordBits; ++word) {
      const uint32_t bits = packed_word(keep, word);
      const int64_t base = word * kWordBits;
      for (int j = 0; j < kWordBits; ++j) {
        sgd_entry<T, true, kDecay, kMomentum, kNesterov>(p, g, b, base + j, ((bits >> j) & 1) != 0, s);
      }
    }
    for (int64_t i = last; i < hi; ++i) {
      sgd_entry<T, true, kDecay, kMomentum, kNesterov>(p, g, b, i, packed_bit(keep, i), s);
    }
  } else {
    for (int64_t i = lo; i < hi; ++i) {
      sgd_entry<T, kMasked, kDecay, kMomentum, kNesterov>(p, g, b, i, kMasked && keep[i] != 0, s);
    }
  }
}

template <typename T, bool kMasked, Decay kDecay, bool kAmsgrad, bool kLerpSmall>
C10_ALWAYS_INLINE void adam_entry(T* __restrict p, const T* __restrict g, T* __restrict m, T* __restrict v,
                                  T* __restrict mx, int64_t i, bool kept, const AdamScalars& s) {
  float param = static_cast<float>(p[i]);
  float grad = static_cast<float>(g[i]) * s.sign;
  if constexpr (kDecay == Decay::kDecoupled) param = param * s.decay_factor;
  if constexpr (kDecay == Decay::kCoupled) grad = std::fma(param, s.weight_decay, grad);
  float exp_avg = static_cast<float>(m[i]);
  // exp_avg.lerp_(grad, 1 - beta1), from the nearer endpoint as torch's lerp
  exp_avg = kLerpSmall ? std::fma(s.exp_avg_coefficient, grad - exp_avg, exp_avg)
                       : std::fma(s.exp_avg_coefficient - 1.f, grad - exp_avg, grad);
  float exp_avg_sq = std::fma(s.exp_avg_sq_coefficient * grad, grad, static_cast<float>(v[i]) * s.beta2);
  float second = exp_avg_sq;
  if constexpr (kAmsgrad) second = std::max(static_cast<float>(mx[i]), exp_avg_sq);
  const float denom = std::sqrt(second) / s.bias_correction2_sqrt + s.eps;
  param = param + s.neg_step_size * exp_avg / denom;
  if constexpr (kMasked) {
    param = kept ? param : 0.f;
    exp_avg = kept ? exp_avg : 0.f;
    exp_avg_sq = kept ? exp_avg_sq : 0.f;
    second = kept ? second : 0.f;
  }
  p[i] = static_cast<T>(param);
  m[i] = static_cast<T>(exp_avg);
  v[i] = static_cast<T>(exp_avg_sq);
  if constexpr (kAmsgrad) mx[i] = static_cast<T>(second);
}

template <typename T, MaskKind kMask, Decay kDecay, bool kAmsgrad, bool kLerpSmall>
void adam_range(T* __restrict p, const T* __restrict g, T* __restrict m, T* __restrict v, T* __restrict mx,
                const uint8_t* __restrict keep, int64_t lo, int64_t hi, const AdamScalars s) {
  constexpr bool kMasked = kMask != MaskKind::kNone;
  if constexpr (kMask == MaskKind::kBits) {
    const auto [first, last] = whole_words(lo, hi);
    for (int64_t i = lo; i < first; ++i) {
      adam_entry<T, true, kDecay, kAmsgrad, kLerpSmall>(p, g, m, v, mx, i, packed_bit(keep, i), s);
    }
    for (int64_t word = first / kWordBits; word < last / kWordBits; ++word) {
      const uint32_t bits = packed_word(keep, word);
      const int64_t base = word * kWordBits;
      for (int j = 0; j < kWordBits; ++j) {
        adam_entry<T, true, kDecay, kAmsgrad, kLerpSmall>(p, g, m, v, mx, base + j, ((bits >> j) & 1) != 0, s);
      }
    }
    for (int64_t i = last; i < hi; ++i) {
      adam_entry<T, true, kDecay, kAmsgrad, kLerpSmall>(p, g, m, v, mx, i, packed_bit(keep, i), s);
    }
  } else {
    for (int64_t i = lo; i < hi; ++i) {
      adam_entry<T, kMasked, kDecay, kAmsgrad, kLerpSmall>(p, g, m, v, mx, i, kMasked && keep[i] != 0, s);
    }
  }
}

// Calls f(std::integral_constant<bool, value>{}).
template <typename F>
void with_bool(bool value, const F& f) {
  if (value) {
    f(std::true_type{});
  } else {
    f(std::false_type{});
  }
}

template <typename T>
struct TypeTag {
  using type = T;
};

// Calls f(TypeTag<T>{}) for the kernel float type of `dtype` (float32, float16 or bfloat16: checked before).
template <typename F>
void with_float_type(at::ScalarType dtype, const F& f) {
  if (dtype == at::kFloat) {
    f(TypeTag<float>{});
  } else if (dtype == at::kHalf) {
    f(TypeTag<at::Half>{});
  } else {
    f(TypeTag<at::BFloat16>{});
  }
}

// The pointers of optional lists: nullptr for every tensor when the list is empty.
template <typename T>
std::vector<T*> pointers_or_null(at::TensorList tensors, size_t count) {
  return tensors.empty() ? std::vector<T*>(count, nullptr) : data_pointers<T>(tensors);
}

// The bytes of each mask (bool or packed uint8); nullptr for every tensor when there are none.
std::vector<const uint8_t*> mask_pointers(at::TensorList masks, size_t count) {
  std::vector<const uint8_t*> pointers(count, nullptr);
  for (size_t i = 0; i < masks.size(); ++i) {
    pointers[i] = masks[i].scalar_type() == at::kBool ? bool_data(masks[i]) : masks[i].data_ptr<uint8_t>();
  }
  return pointers;
}

// Calls f(std::integral_constant<MaskKind, kind>{}).
template <typename F>
void with_mask_kind(MaskKind kind, const F& f) {
  if (kind == MaskKind::kNone) {
    f(std::integral_constant<MaskKind, MaskKind::kNone>{});
  } else if (kind == MaskKind::kBytes) {
    f(std::integral_constant<MaskKind, MaskKind::kBytes>{});
  } else {
    f(std::integral_constant<MaskKind, MaskKind::kBits>{});
  }
}

// Calls body(tensor, begin, end) over the flat concatenation of `params`, split across threads.
template <typename F>
void parallel_pieces(at::TensorList params, const F& body) {
  const auto offsets = flat_offsets(params);
  at::parallel_for(0, offsets.back(), kGrain, [&](int64_t begin, int64_t end) {
    for_each_piece(offsets, begin, end, body);
  });
}

template <typename T>
void sgd_list(at::TensorList params, at::TensorList grads, at::TensorList buffers, at::TensorList masks,
              MaskKind mask_kind, const SgdScalars& s, bool decay, Momentum momentum, bool nesterov) {
  const auto p = data_pointers<T>(params);
  const auto g = data_pointers<const T>(grads);
  const auto b = pointers_or_null<T>(buffers, params.size());
  const auto k = mask_pointers(masks, params.size());
  with_mask_kind(mask_kind, [&](auto masked) {
    with_bool(decay, [&](auto decayed) {
      with_bool(nesterov && momentum != Momentum::kNone, [&](auto nesterov_on) {
        const auto run = [&](auto mode) {
          parallel_pieces(params, [&](int64_t t, int64_t lo, int64_t hi) {
            sgd_range<T, masked(), decayed(), decltype(mode)::value, nesterov_on()>(p[t], g[t], b[t], k[t], lo, hi, s);
          });
        };
        if (momentum == Momentum::kNone) {
          run(std::integral_constant<Momentum, Momentum::kNone>{});
        } else if (momentum == Momentum::kFirst) {
          run(std::integral_constant<Momentum, Momentum::kFirst>{});
        } else {
          run(std::integral_constant<Momentum, Momentum::kBlend>{});
        }
      });
    });
  });
}

template <typename T>
void adam_list(at::TensorList params, at::TensorList grads, at::TensorList exp_avgs, at::TensorList exp_avg_sqs,
               at::TensorList maxima, at::TensorList masks, MaskKind mask_kind, const AdamScalars& s, Decay decay,
               bool lerp_small) {
  const auto p = data_pointers<T>(params);
  const auto g = data_pointers<const T>(grads);
  const auto m = data_pointers<T>(exp_avgs);
  const auto v = data_pointers<T>(exp_avg_sqs);
  const auto mx = pointers_or_null<T>(maxima, params.size());
  const auto k = mask_pointers(masks, params.size());
  with_mask_kind(mask_kind, [&](auto masked) {
    with_bool(!maxima.empty(), [&](auto amsgrad) {
      with_bool(lerp_small, [&](auto small) {
        const auto run = [&](auto mode) {
          parallel_pieces(params, [&](int64_t t, int64_t lo, int64_t hi) {
            adam_range<T, masked(), decltype(mode)::value, amsgrad(), small()>(p[t], g[t], m[t], v[t], mx[t], k[t],
                                                                                lo, hi, s);
          });
        };
        if (decay == Decay::kNone) {
          run(std::integral_constant<Decay, Decay::kNone>{});
        } else if (decay == Decay::kCoupled) {
          run(std::integral_constant<Decay, Decay::kCoupled>{});
        } else {
          run(std::integral_constant<Decay, Decay::kDecoupled>{});
        }
      });
    });
  });
}

// ------------------------------------------------------------------ checks (the op's contract, in C++)
void check_finite(double value, const char* name) {
  TORCH_CHECK_VALUE(std::isfinite(value), name, " must be finite, got ", value);
}

// params: float, one dtype, CPU, contiguous or channels_last. Returns the checked dtype.
at::ScalarType check_params(at::TensorList params) {
  const auto dtype = params[0].scalar_type();
  const auto device = params[0].device();
  for (size_t i = 0; i < params.size(); ++i) {
    const at::Tensor& param = params[i];
    if (param.scalar_type() != dtype || param.device() != device) {
      check_float_on(device, param, "params[", i, "]");
      TORCH_CHECK_TYPE(false, "params must all have one dtype: params[0] is ", dtype_name(dtype), ", params[", i,
                       "] is ", dtype_name(param.scalar_type()));
    }
    TORCH_CHECK_VALUE(flat_dense(param), "params[", i, "] must be contiguous or channels_last (it is updated in "
                      "place); call .contiguous() on it first");
  }
  check_float_on(device, params[0], "params[0]");
  TORCH_CHECK_VALUE(device.is_cpu(), "params must be CPU tensors for the C++ kernels, got ", device);
  return dtype;
}

// One tensor per parameter with its shape and dtype; in-place ones laid out like it, read-only ones
// returned in its memory order (a copy when they are not).
std::vector<at::Tensor> check_like_params(at::TensorList tensors, at::TensorList params, const char* name,
                                          bool writable) {
  TORCH_CHECK_VALUE(tensors.size() == params.size(), name, " must have one tensor per parameter: got ",
                    tensors.size(), " for ", params.size(), " params");
  std::vector<at::Tensor> checked;
  checked.reserve(tensors.size());
  for (size_t i = 0; i < tensors.size(); ++i) {
    const at::Tensor& tensor = tensors[i];
    const at::Tensor& param = params[i];
    TORCH_CHECK_TYPE(tensor.scalar_type() == param.scalar_type() && tensor.device() == param.device(), name, "[",
                     i, "] must be ", dtype_name(param.scalar_type()), " on ", param.device(), ", got ",
                     describe(tensor));
    TORCH_CHECK_VALUE(tensor.sizes() == param.sizes(), name, "[", i, "] must have the shape of params[", i, "] ",
                      shape_string(param.sizes()), ", got ", shape_string(tensor.sizes()));
    if (writable) {
      TORCH_CHECK_VALUE(same_order(tensor, param), name, "[", i, "] must be laid out like params[", i,
                        "] (contiguous or channels_last; it is updated in place): make it with "
                        "torch.zeros_like(param)");
      checked.push_back(tensor);
    } else {
      checked.push_back(in_order_of(tensor, param));
    }
  }
  return checked;
}

// Empty, or one mask per parameter, all of one kind: bool of its shape (or flat), returned in its memory
// order; or packed, uint8 1-D of ceil(numel / 8) bytes (its entries in the parameter's memory order).
std::pair<std::vector<at::Tensor>, MaskKind> check_masks(at::TensorList masks, at::TensorList params) {
  std::vector<at::Tensor> checked;
  if (masks.empty()) return {checked, MaskKind::kNone};
  TORCH_CHECK_VALUE(masks.size() == params.size(), "masks must be empty or have one mask per parameter: got ",
                    masks.size(), " for ", params.size(), " params");
  const bool packed = masks[0].scalar_type() == at::kByte;
  checked.reserve(masks.size());
  for (size_t i = 0; i < masks.size(); ++i) {
    const at::Tensor& mask = masks[i];
    const at::Tensor& param = params[i];
    const auto dtype = mask.scalar_type();
    TORCH_CHECK_TYPE((dtype == at::kBool || dtype == at::kByte) && mask.device() == param.device(), "masks[", i,
                     "] must be bool (one per entry) or uint8 (packed bits) on ", param.device(), ", got ",
                     describe(mask));
    TORCH_CHECK_VALUE((dtype == at::kByte) == packed, "masks[", i, "] is ", dtype_name(dtype), " but masks[0] is ",
                      dtype_name(masks[0].scalar_type()), ": the masks must be all bool or all packed (uint8)");
    if (packed) {
      const int64_t bytes = (param.numel() + 7) / 8;
      TORCH_CHECK_VALUE(mask.dim() == 1 && mask.numel() == bytes, "masks[", i, "] (packed) must be 1-D with ",
                        "ceil(numel / 8) = ", bytes, " bytes for params[", i, "] (", param.numel(),
                        " entries), got shape ", shape_string(mask.sizes()));
      checked.push_back(mask.contiguous());
    } else {
      TORCH_CHECK_VALUE(mask.sizes() == param.sizes() || (mask.dim() == 1 && mask.numel() == param.numel()),
                        "masks[", i, "] must have the shape of params[", i, "] ", shape_string(param.sizes()),
                        ", got ", shape_string(mask.sizes()));
      checked.push_back(in_order_of(mask, param));
    }
  }
  return {checked, packed ? MaskKind::kBits : MaskKind::kBytes};
}

void check_empty(at::TensorList tensors, const char* name, const char* when) {
  TORCH_CHECK_VALUE(tensors.empty(), name, " must be empty ", when);
}

}  // namespace

void masked_sgd_(at::TensorList params, at::TensorList grads_in, at::TensorList buffers, at::TensorList masks_in,
                 double lr, double weight_decay, double momentum, double dampening, bool nesterov, bool maximize,
                 bool first_step) {
  check_finite(lr, "lr");
  check_finite(weight_decay, "weight_decay");
  check_finite(momentum, "momentum");
  check_finite(dampening, "dampening");
  TORCH_CHECK_VALUE(momentum >= 0 && weight_decay >= 0, "momentum and weight_decay must be >= 0, got ", momentum,
                    " and ", weight_decay);
  TORCH_CHECK_VALUE(!nesterov || (momentum > 0 && dampening == 0),
                    "nesterov needs momentum > 0 and dampening 0 (as torch.optim.SGD)");
  if (params.empty()) {
    check_empty(grads_in, "grads", "when params is");
    check_empty(masks_in, "masks", "when params is");
    check_empty(buffers, "momentum_buffers", "when params is");
    return;
  }
  const auto dtype = check_params(params);
  const auto grads = check_like_params(grads_in, params, "grads", false);
  std::vector<at::Tensor> masks;
  MaskKind mask_kind;
  std::tie(masks, mask_kind) = check_masks(masks_in, params);
  if (momentum == 0) {
    check_empty(buffers, "momentum_buffers", "when momentum is 0");
  } else {
    check_like_params(buffers, params, "momentum_buffers", true);
  }
  check_no_aliasing({{"params", params, true}, {"momentum_buffers", buffers, true}, {"grads", grads_in, false},
                     {"masks", masks_in, false}});
  SgdScalars s;
  s.neg_lr = static_cast<float>(-lr);
  s.weight_decay = static_cast<float>(weight_decay);
  s.momentum = static_cast<float>(momentum);
  s.one_minus_dampening = static_cast<float>(1 - dampening);
  s.sign = maximize ? -1.f : 1.f;
  const Momentum mode = momentum == 0 ? Momentum::kNone : first_step ? Momentum::kFirst : Momentum::kBlend;
  with_float_type(dtype, [&](auto type) {
    sgd_list<typename decltype(type)::type>(params, grads, buffers, masks, mask_kind, s, weight_decay != 0, mode,
                                            nesterov);
  });
}

void masked_adam_(at::TensorList params, at::TensorList grads_in, at::TensorList exp_avgs, at::TensorList exp_avg_sqs,
                  at::TensorList maxima, at::TensorList masks_in, double lr, double beta1, double beta2, double eps,
                  double weight_decay, double step, bool decoupled, bool maximize) {
  for (const auto& [value, name] : {std::pair{lr, "lr"}, {beta1, "beta1"}, {beta2, "beta2"}, {eps, "eps"},
                                    {weight_decay, "weight_decay"}, {step, "step"}}) {
    check_finite(value, name);
  }
  TORCH_CHECK_VALUE(0 <= beta1 && beta1 < 1, "beta1 must be in [0, 1), got ", beta1);
  TORCH_CHECK_VALUE(0 <= beta2 && beta2 < 1, "beta2 must be in [0, 1), got ", beta2);
  TORCH_CHECK_VALUE(eps >= 0 && weight_decay >= 0, "eps and weight_decay must be >= 0, got ", eps, " and ",
                    weight_decay);
  TORCH_CHECK_VALUE(step >= 1, "step must be >= 1 (the step count after this step), got ", step);
  if (params.empty()) {
    check_empty(grads_in, "grads", "when params is");
    check_empty(masks_in, "masks", "when params is");
    check_empty(exp_avgs, "exp_avgs", "when params is");
    check_empty(exp_avg_sqs, "exp_avg_sqs", "when params is");
    check_empty(maxima, "max_exp_avg_sqs", "when params is");
    return;
  }
  const auto dtype = check_params(params);
  const auto grads = check_like_params(grads_in, params, "grads", false);
  check_like_params(exp_avgs, params, "exp_avgs", true);
  check_like_params(exp_avg_sqs, params, "exp_avg_sqs", true);
  if (!maxima.empty()) check_like_params(maxima, params, "max_exp_avg_sqs", true);
  std::vector<at::Tensor> masks;
  MaskKind mask_kind;
  std::tie(masks, mask_kind) = check_masks(masks_in, params);
  check_no_aliasing({{"params", params, true}, {"exp_avgs", exp_avgs, true}, {"exp_avg_sqs", exp_avg_sqs, true},
                     {"max_exp_avg_sqs", maxima, true}, {"grads", grads_in, false}, {"masks", masks_in, false}});
  // As torch's fused step: the bias corrections and the step size in double, then float.
  const double bias_correction1 = 1 - std::pow(beta1, step);
  const double bias_correction2 = 1 - std::pow(beta2, step);
  AdamScalars s;
  s.neg_step_size = -static_cast<float>(lr / bias_correction1);
  s.beta2 = static_cast<float>(beta2);
  s.exp_avg_coefficient = static_cast<float>(1 - beta1);
  s.exp_avg_sq_coefficient = static_cast<float>(1 - beta2);
  s.bias_correction2_sqrt = static_cast<float>(std::sqrt(bias_correction2));
  s.eps = static_cast<float>(eps);
  s.weight_decay = static_cast<float>(weight_decay);
  s.decay_factor = static_cast<float>(1 - lr * weight_decay);
  s.sign = maximize ? -1.f : 1.f;
  const Decay decay = weight_decay == 0 ? Decay::kNone : decoupled ? Decay::kDecoupled : Decay::kCoupled;
  const bool lerp_small = std::abs(s.exp_avg_coefficient) < 0.5f;
  with_float_type(dtype, [&](auto type) {
    adam_list<typename decltype(type)::type>(params, grads, exp_avgs, exp_avg_sqs, maxima, masks, mask_kind, s, decay,
                                             lerp_small);
  });
}

}  // namespace sparseticket
