// Gem-Miner ops: the score-masked weight, its straight-through backward, and the fused score update
// (momentum SGD with L2, clamp to [0, 1], count of kept entries, optionally the masked weights of the
// updated scores) in fp32.
#include <ATen/MemoryOverlap.h>

// No floating-point contraction: each product and sum is rounded as written, so the step that forms the
// scores' gradient itself (gemminer_step_from_masked_grads_) rounds g * w to fp32 before adding, exactly
// as the backward pass that stores it did, and both steps equal the reference bit for bit.
#pragma GCC optimize("fp-contract=off")

#include <bit>
#include <type_traits>

#include "aliasing.h"
#include "common.h"
#include "ops.h"

namespace sparseticket {
namespace {

template <typename S>
C10_ALWAYS_INLINE bool keeps(S score, uint8_t flag) {
  return (static_cast<float>(score) > 0.5f) & (flag != 0);
}

template <typename W, typename S>
void mask_range(const W* __restrict weight, const S* __restrict scores, const uint8_t* __restrict flags,
                W* __restrict out, int64_t begin, int64_t end) {
  for (int64_t i = begin; i < end; ++i) {
    const W w = weight[i];  // loaded unconditionally so that the select vectorises
    out[i] = keeps(scores[i], flags[i]) ? w : static_cast<W>(0.f);
  }
}

template <typename T, typename S, bool kWeight, bool kScores>
void backward_range(const T* __restrict grad, const T* __restrict weight, const S* __restrict scores,
                     const uint8_t* __restrict flags, T* __restrict grad_weight, S* __restrict grad_scores,
                     int64_t begin, int64_t end) {
  for (int64_t i = begin; i < end; ++i) {
    const T g = grad[i];
    if constexpr (kWeight) grad_weight[i] = keeps(scores[i], flags[i]) ? g : static_cast<T>(0.f);
    if constexpr (kScores) {
      const float product = static_cast<float>(g) * static_cast<float>(weight[i]);
      grad_scores[i] = static_cast<S>(flags[i] ? product : 0.f);
    }
  }
}

// `value` where `keep`, else +0: a select written as a bit mask (never a multiply: inf * 0 is NaN). In
// step_range GCC does not if-convert `keep ? value : 0` next to the other selects, and the loop would
// stay scalar; the mask vectorises.
template <typename W>
C10_ALWAYS_INLINE W kept_or_zero(bool keep, W value) {
  using Bits = std::conditional_t<sizeof(W) == 2, uint16_t, std::conditional_t<sizeof(W) == 4, uint32_t, uint64_t>>;
  static_assert(sizeof(Bits) == sizeof(W));
  const Bits mask = Bits{0} - static_cast<Bits>(keep);
  return std::bit_cast<W>(static_cast<Bits>(std::bit_cast<Bits>(value) & mask));
}

// Updates [begin, end) and returns how many of them end with score > 0.5 and flag. With kMasked, also
// masked[i] = weights[i] where the stored score > 0.5 and flag, else 0 (gemminer_mask of the new scores).
// With kOfMasked, grads[i] is the gradient of the masked weight and the scores' is grads[i] * weights[i]
// (gemminer_mask_backward's product, in fp32; entries without flag are not updated, so their 0 is moot).
template <typename T, typename W, bool kMasked, bool kOfMasked = false, typename G = T>
int64_t step_range(T* __restrict scores, const G* __restrict grads, T* __restrict velocity,
                   const uint8_t* __restrict flags, const W* __restrict weights, W* __restrict masked,
                   int64_t begin, int64_t end, float lr, float momentum, float decay) {
  int64_t kept = 0;
  for (int64_t i = begin; i < end; ++i) {
    const T p_old = scores[i], v_old = velocity[i];
    const float p = static_cast<float>(p_old), v = static_cast<float>(v_old);
    float g = static_cast<float>(grads[i]);
    if constexpr (kOfMasked) g *= static_cast<float>(weights[i]);
    const float v_new = momentum * v + (g + decay * p);
    const float p_new = std::min(std::max(p - lr * v_new, 0.f), 1.f);  // keeps NaN, as torch.clamp
    const bool on = flags[i] != 0;
    const T stored = on ? static_cast<T>(p_new) : p_old;
    velocity[i] = on ? static_cast<T>(v_new) : v_old;
    scores[i] = stored;
    const bool keep = keeps(stored, flags[i]);
    if constexpr (kMasked) {
      masked[i] = kept_or_zero(keep, weights[i]);
    }
    kept += keep;
  }
  return kept;
}

void check_same_sizes(const at::Tensor& a, const at::Tensor& b, const char* what) {
  TORCH_CHECK(a.sizes() == b.sizes(), what, " must have the same shape, got ", a.sizes(), " and ", b.sizes());
}

}  // namespace

at::Tensor gemminer_mask(const at::Tensor& weight, const at::Tensor& scores, const at::Tensor& flags) {
  auto out = at::empty_like(weight);  // weight's memory order (row-major or channels_last)
  gemminer_mask_into(weight, scores, flags, out);
  return out;
}

void gemminer_mask_into(const at::Tensor& weight, const at::Tensor& scores, const at::Tensor& flags,
                        const at::Tensor& out) {
  check_input_like(weight, "weight", weight);
  check_input_like(scores, "scores", weight);
  check_input_like(flags, "flags", weight);
  TORCH_CHECK(flags.scalar_type() == at::kBool, "flags must be bool");
  check_input_like(out, "out", weight);
  check_same_sizes(weight, scores, "gemminer_mask: weight and scores");
  check_same_sizes(weight, flags, "gemminer_mask: weight and flags");
  check_same_sizes(weight, out, "gemminer_mask: weight and out");
  TORCH_CHECK(out.scalar_type() == weight.scalar_type(), "gemminer_mask: out must have weight's dtype");
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, weight.scalar_type(), "gemminer_mask", [&] {
    using W = scalar_t;
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, scores.scalar_type(), "gemminer_mask", [&] {
      const W* w = weight.data_ptr<W>();
      const scalar_t* s = scores.data_ptr<scalar_t>();
      const uint8_t* f = bool_data(flags);
      W* o = out.data_ptr<W>();
      at::parallel_for(0, weight.numel(), kGrain, [&](int64_t begin, int64_t end) {
        mask_range(w, s, f, o, begin, end);
      });
    });
  });
}

std::tuple<at::Tensor, at::Tensor> gemminer_mask_backward(const at::Tensor& grad, const at::Tensor& weight,
                                                          const at::Tensor& scores, const at::Tensor& flags,
                                                          bool need_weight, bool need_scores) {
  check_input_like(weight, "weight", weight);
  check_input_like(grad, "grad", weight);
  check_input_like(scores, "scores", weight);
  check_input_like(flags, "flags", weight);
  TORCH_CHECK(flags.scalar_type() == at::kBool, "flags must be bool");
  check_same_sizes(grad, weight, "gemminer_mask_backward: grad and weight");
  check_same_sizes(grad, scores, "gemminer_mask_backward: grad and scores");
  check_same_sizes(grad, flags, "gemminer_mask_backward: grad and flags");
  if (grad.scalar_type() != weight.scalar_type()) {
    // Rare mixed dtypes: both conversions are exact for what each gradient reads.
    const auto empty = grad.new_empty({0});
    return {need_weight ? std::get<0>(gemminer_mask_backward(grad.to(weight.scalar_type()), weight, scores, flags,
                                                             true, false))
                        : empty,
            need_scores ? std::get<1>(gemminer_mask_backward(grad.to(at::kFloat), weight.to(at::kFloat), scores,
                                                             flags, false, true))
                        : empty};
  }
  auto grad_weight = need_weight ? at::empty_like(weight) : grad.new_empty({0});
  auto grad_scores = need_scores ? at::empty_like(scores) : grad.new_empty({0});
  if (!need_weight && !need_scores) return {grad_weight, grad_scores};
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad.scalar_type(), "gemminer_mask_backward", [&] {
    using T = scalar_t;
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, scores.scalar_type(), "gemminer_mask_backward", [&] {
      using S = scalar_t;
      const T* g = grad.data_ptr<T>();
      const T* w = weight.data_ptr<T>();
      const S* s = scores.data_ptr<S>();
      const uint8_t* f = bool_data(flags);
      T* gw = need_weight ? grad_weight.data_ptr<T>() : nullptr;
      S* gs = need_scores ? grad_scores.data_ptr<S>() : nullptr;
      at::parallel_for(0, grad.numel(), kGrain, [&](int64_t begin, int64_t end) {
        if (need_weight && need_scores) return backward_range<T, S, true, true>(g, w, s, f, gw, gs, begin, end);
        if (need_weight) return backward_range<T, S, true, false>(g, w, s, f, gw, gs, begin, end);
        backward_range<T, S, false, true>(g, w, s, f, gw, gs, begin, end);
      });
    });
  });
  return {grad_weight, grad_scores};
}

void gemminer_mask_backward_scores_into(const at::Tensor& grad, const at::Tensor& weight, const at::Tensor& flags,
                                        const at::Tensor& out) {
  check_input_like(weight, "weight", weight);
  check_input_like(grad, "grad", weight);
  check_input_like(flags, "flags", weight);
  TORCH_CHECK(flags.scalar_type() == at::kBool, "flags must be bool");
  check_input_like(out, "out", weight);
  check_same_sizes(grad, weight, "gemminer_mask_backward: grad and weight");
  check_same_sizes(grad, flags, "gemminer_mask_backward: grad and flags");
  check_same_sizes(grad, out, "gemminer_mask_backward: grad and out");
  TORCH_CHECK(grad.scalar_type() == weight.scalar_type(), "grad and weight must have one dtype");
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad.scalar_type(), "gemminer_mask_backward", [&] {
    using T = scalar_t;
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, out.scalar_type(), "gemminer_mask_backward", [&] {
      using S = scalar_t;
      const T* g = grad.data_ptr<T>();
      const T* w = weight.data_ptr<T>();
      const uint8_t* f = bool_data(flags);
      S* gs = out.data_ptr<S>();
      at::parallel_for(0, grad.numel(), kGrain, [&](int64_t begin, int64_t end) {
        backward_range<T, S, false, true>(g, w, static_cast<const S*>(nullptr), f, nullptr, gs, begin, end);
      });
    });
  });
}

at::Tensor gemminer_step_(const at::Tensor& scores, const at::Tensor& grads, const at::Tensor& momentum_buffer,
                          const at::Tensor& flags, double lr, double momentum, double l2,
                          const std::optional<at::Tensor>& weights, const std::optional<at::Tensor>& masked_out) {
  check_input(scores, "scores");
  check_input(grads, "grads");
  check_input(momentum_buffer, "momentum_buffer");
  check_input(flags, "flags", at::kBool);
  check_same_sizes(scores, grads, "gemminer_step_: scores and grads");
  check_same_sizes(scores, momentum_buffer, "gemminer_step_: scores and momentum_buffer");
  check_same_sizes(scores, flags, "gemminer_step_: scores and flags");
  const bool has_masked = masked_out.has_value();
  TORCH_CHECK(weights.has_value() == has_masked, "gemminer_step_: pass weights and masked_out both or neither");
  if (has_masked) {
    check_input(*weights, "weights");
    check_input(*masked_out, "masked_out", weights->scalar_type());
    check_same_sizes(scores, *weights, "gemminer_step_: scores and weights");
    check_same_sizes(scores, *masked_out, "gemminer_step_: scores and masked_out");
    for (const auto* input : {&scores, &grads, &momentum_buffer, &flags, &*weights}) {
      at::assert_no_overlap(*masked_out, *input);  // it is written while they are read
    }
  }
  const auto dtype = scores.scalar_type();
  if (grads.scalar_type() != dtype || momentum_buffer.scalar_type() != dtype) {
    // Rare mixed dtypes: step fp32 copies (the math is fp32 anyway), store back, count the stored scores.
    auto p = scores.to(at::kFloat), v = momentum_buffer.to(at::kFloat);
    gemminer_step_(p, grads.to(at::kFloat), v, flags, lr, momentum, l2, std::nullopt, std::nullopt);
    scores.copy_(p);
    momentum_buffer.copy_(v);
    if (has_masked) gemminer_mask_into(*weights, scores, flags, *masked_out);
    return at::logical_and(scores > 0.5, flags).sum();
  }
  int64_t kept = 0;
  const float flr = static_cast<float>(lr), fmomentum = static_cast<float>(momentum);
  const float decay = static_cast<float>(2.0 * l2);
  const uint8_t* f = bool_data(flags);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dtype, "gemminer_step_", [&] {
    using T = scalar_t;
    T* p = scores.data_ptr<T>();
    const T* g = grads.data_ptr<T>();
    T* v = momentum_buffer.data_ptr<T>();
    if (!has_masked) {
      kept = at::parallel_reduce(
          0, scores.numel(), kGrain, int64_t{0},
          [&](int64_t begin, int64_t end, int64_t) {
            return step_range<T, T, false>(p, g, v, f, nullptr, nullptr, begin, end, flr, fmomentum, decay);
          },
          std::plus<int64_t>());
      return;
    }
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, weights->scalar_type(), "gemminer_step_", [&] {
      using W = scalar_t;
      const W* w = weights->data_ptr<W>();
      W* m = masked_out->data_ptr<W>();
      kept = at::parallel_reduce(
          0, scores.numel(), kGrain, int64_t{0},
          [&](int64_t begin, int64_t end, int64_t) {
            return step_range<T, W, true>(p, g, v, f, w, m, begin, end, flr, fmomentum, decay);
          },
          std::plus<int64_t>());
    });
  });
  return at::scalar_tensor(kept, scores.options().dtype(at::kLong));
}

at::Tensor gemminer_step_from_masked_grads_(const at::Tensor& scores, at::TensorList masked_grads,
                                            const at::Tensor& momentum_buffer, const at::Tensor& flags, double lr,
                                            double momentum, double l2, const at::Tensor& weights,
                                            const std::optional<at::Tensor>& masked_out) {
  const at::Device cpu(at::kCPU);
  check_float_on(cpu, scores, "scores");
  check_float_on(cpu, weights, "weights");
  TORCH_CHECK_TYPE(momentum_buffer.scalar_type() == scores.scalar_type() && momentum_buffer.device() == cpu,
                   "momentum_buffer must be ", describe(scores), ", got ", describe(momentum_buffer));
  TORCH_CHECK_TYPE(flags.scalar_type() == at::kBool && flags.device() == cpu, "flags must be bool on cpu, got ",
                   describe(flags));
  if (masked_out.has_value()) {
    TORCH_CHECK_TYPE(masked_out->scalar_type() == weights.scalar_type() && masked_out->device() == cpu,
                     "masked_out must be ", describe(weights), ", got ", describe(*masked_out));
  }
  std::vector<std::pair<const at::Tensor*, const char*>> flat = {
      {&scores, "scores"}, {&momentum_buffer, "momentum_buffer"}, {&flags, "flags"}, {&weights, "weights"}};
  if (masked_out.has_value()) flat.emplace_back(&*masked_out, "masked_out");
  for (const auto& [tensor, name] : flat) {
    TORCH_CHECK_VALUE(tensor->dim() == 1 && tensor->is_contiguous() && tensor->numel() == scores.numel(), name,
                      " must be 1-D and contiguous with the ", scores.numel(), " entries of scores, got shape ",
                      shape_string(tensor->sizes()));
  }
  int64_t total = 0;
  for (size_t i = 0; i < masked_grads.size(); ++i) {
    const at::Tensor& grad = masked_grads[i];
    TORCH_CHECK_TYPE(grad.scalar_type() == weights.scalar_type() && grad.device() == cpu, "masked_grads[", i,
                     "] must be ", describe(weights), ", got ", describe(grad));
    TORCH_CHECK_VALUE(flat_dense(grad), "masked_grads[", i, "] must be contiguous or channels_last (read in its "
                      "memory order)");
    total += grad.numel();
  }
  TORCH_CHECK_VALUE(total == scores.numel(), "masked_grads must hold one gradient per entry of scores: ", total,
                    " entries for ", scores.numel(), " scores");
  const at::TensorList masked_list = masked_out.has_value() ? at::TensorList(*masked_out) : at::TensorList();
  check_no_aliasing({{"scores", at::TensorList(scores), true}, {"momentum_buffer", at::TensorList(momentum_buffer), true},
                     {"masked_out", masked_list, true}, {"masked_grads", masked_grads, false},
                     {"flags", at::TensorList(flags), false}, {"weights", at::TensorList(weights), false}});
  const auto offsets = flat_offsets(masked_grads);
  const float flr = static_cast<float>(lr), fmomentum = static_cast<float>(momentum);
  const float decay = static_cast<float>(2.0 * l2);
  const uint8_t* f = bool_data(flags);
  int64_t kept = 0;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, scores.scalar_type(), "gemminer_step_from_masked_grads_", [&] {
    using T = scalar_t;
    T* p = scores.data_ptr<T>();
    T* v = momentum_buffer.data_ptr<T>();
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, weights.scalar_type(), "gemminer_step_from_masked_grads_", [&] {
      using W = scalar_t;
      const W* w = weights.data_ptr<W>();
      W* m = masked_out.has_value() ? masked_out->data_ptr<W>() : nullptr;
      const auto g = data_pointers<const W>(masked_grads);
      kept = at::parallel_reduce(
          0, total, kGrain, int64_t{0},
          [&](int64_t begin, int64_t end, int64_t) {
            int64_t count = 0;
            for_each_piece(offsets, begin, end, [&](int64_t t, int64_t lo, int64_t hi) {
              const int64_t base = offsets[t];
              count += m != nullptr
                           ? step_range<T, W, true, true, W>(p + base, g[t], v + base, f + base, w + base, m + base, lo, hi, flr,
                                                            fmomentum, decay)
                           : step_range<T, W, false, true, W>(p + base, g[t], v + base, f + base, w + base, nullptr, lo, hi,
                                                             flr, fmomentum, decay);
            });
            return count;
          },
          std::plus<int64_t>());
    });
  });
  return at::scalar_tensor(kept, scores.options().dtype(at::kLong));
}

}  // namespace sparseticket
