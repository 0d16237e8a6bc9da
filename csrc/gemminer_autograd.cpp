// GemMiner's per-layer hot path: the score-masked weight with its straight-through backward as one
// C++ autograd op, sparseticket_cpu::gemminer_masked_weight(weight, scores, flags, grad_slot, claimed,
// weight_slot, precomputed).
//
// - No Python runs per layer in forward or backward (the Python autograd path costs several times
//   the kernels at ResNet layer sizes).
// - The scores' gradient is written straight into `grad_slot` (this layer's slice of the miner's
//   flat gradient) and returned as a fresh alias of it, which autograd's AccumulateGrad adopts as
//   `scores.grad` without a copy: no temporary, no zero-fill, no accumulation pass.
// - That shortcut is taken only for the first gradient of a step (`claimed[0]` is 0, set here,
//   reset by GemMiner.step()) and only when `scores.grad` is undefined. A second use of the layer
//   in one graph, or a second backward before the step (gradient accumulation), gets a fresh
//   tensor that autograd adds as usual.
// - The masked weight is written into `weight_slot`, a buffer the layer keeps, whenever no tensor but
//   the slot itself references its memory (the previous step's graph is gone): a step then allocates
//   (and page-faults) nothing per layer. While a graph or a caller still holds the last masked
//   weight (gradient accumulation over several forwards), a fresh tensor is allocated.
// - With `held` (a tensor of the weight's dtype, GemMiner's deferred backward), the backward computes
//   nothing: it keeps the masked weight's gradient, in the scores' memory order, as `held`
//   (`held.set_(grad)`: no copy; a second gradient in the same step is added) and returns no scores
//   gradient. gemminer_step_from_masked_grads_ then forms the scores' gradient inside the score step,
//   which reads the weights anyway: one pass over the scores per step instead of two.
// - With `precomputed`, `weight_slot` already holds the masked weight (GemMiner's score step wrote it
//   for the updated scores): the forward returns a new tensor on its memory that shares its version
//   counter (an in-place edit of the result bumps the slot's version) and computes nothing. The
//   backward is the same.
#include <torch/autograd.h>
#include <torch/library.h>

#include "common.h"
#include "ops.h"

namespace sparseticket {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

class MaskedWeight : public torch::autograd::Function<MaskedWeight> {
 public:
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& weight, const at::Tensor& scores,
                            const at::Tensor& flags, const at::Tensor& grad_slot, const at::Tensor& claimed,
                            const at::Tensor& weight_slot, bool precomputed, const std::optional<at::Tensor>& held) {
    ctx->save_for_backward({weight, flags});
    if (held.has_value()) ctx->saved_data["held"] = *held;
    ctx->saved_data["scores"] = scores;  // the leaf itself: backward reads whether it has a .grad
    ctx->saved_data["grad_slot"] = grad_slot;
    ctx->saved_data["claimed"] = claimed;
    if (precomputed) return on_memory_of(weight_slot);
    auto out = reuse_or_allocate(weight_slot, weight);
    gemminer_mask_into(weight, scores, flags, out);
    return out;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad_outputs) {
    const auto saved = ctx->get_saved_variables();
    const auto& weight = saved[0];
    const auto& flags = saved[1];
    const auto scores = ctx->saved_data["scores"].toTensor();
    const bool need_weight = ctx->needs_input_grad(0), need_scores = ctx->needs_input_grad(1);
    const auto grad = in_order_of(grad_outputs[0].to(weight.scalar_type()), weight);
    at::Tensor grad_weight, grad_scores;
    if (need_weight) grad_weight = std::get<0>(gemminer_mask_backward(grad, weight, scores, flags, true, false));
    if (need_scores && ctx->saved_data.count("held")) {
      auto claimed = ctx->saved_data["claimed"].toTensor();
      uint8_t* first = claimed.data_ptr<uint8_t>();
      auto held = ctx->saved_data["held"].toTensor();
      const bool first_this_step = *first == 0;
      *first = 1;
      if (first_this_step || held.sizes() != grad.sizes()) {  // (or the held one was released since)
        held.set_(grad);
      } else {  // a second gradient this step (a layer used twice, gradient accumulation): the sum
        auto sum = at::empty_like(grad);
        at::add_out(sum, held, grad);
        held.set_(sum);
      }
    } else if (need_scores) {
      auto claimed = ctx->saved_data["claimed"].toTensor();
      uint8_t* first = claimed.data_ptr<uint8_t>();
      const auto grad_slot = ctx->saved_data["grad_slot"].toTensor();
      if (*first == 0 && !scores.grad().defined() && grad_slot.scalar_type() == scores.scalar_type()) {
        *first = 1;
        gemminer_mask_backward_scores_into(grad, weight, flags, grad_slot);
        grad_scores = grad_slot.alias();  // one reference: AccumulateGrad adopts it as scores.grad
      } else {
        grad_scores = at::empty_like(scores);
        gemminer_mask_backward_scores_into(grad, weight, flags, grad_scores);
      }
    }
    return {grad_weight, grad_scores, at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor(),
            at::Tensor()};
  }

 private:
  // A new tensor on `masked`'s memory (not a view: autograd takes it as the op's own output) that shares
  // its version counter.
  static at::Tensor on_memory_of(const at::Tensor& masked) {
    auto out = at::empty({0}, masked.options());
    out.set_(masked.storage(), masked.storage_offset(), masked.sizes(), masked.strides());
    out.unsafeGetTensorImpl()->set_version_counter(masked.unsafeGetTensorImpl()->version_counter());
    return out;
  }
};

// The contract of sparseticket::gemminer_mask (ops/_contracts.py) in C++, plus the slot's: float
// weight and scores, bool flags, one shape, CPU; read-only inputs read in the scores' memory order
// (row-major or channels_last), through copies where they differ.
void check_masked_weight(const at::Tensor& weight, const at::Tensor& scores, const at::Tensor& flags,
                         const at::Tensor& grad_slot, const at::Tensor& claimed) {
  const at::Device cpu(at::kCPU);
  check_float_on(cpu, weight, "weight");
  check_float_on(cpu, scores, "scores");
  check_float_on(cpu, grad_slot, "grad_slot");
  TORCH_CHECK_TYPE(flags.scalar_type() == at::kBool && flags.device() == cpu,
                   "flags must be bool on cpu, got ", describe(flags));
  TORCH_CHECK_TYPE(claimed.scalar_type() == at::kByte && claimed.device() == cpu && claimed.numel() == 1,
                   "claimed must be one uint8 on cpu, got ", describe(claimed), " of shape ",
                   shape_string(claimed.sizes()));
  TORCH_CHECK_VALUE(scores.sizes() == weight.sizes() && flags.sizes() == weight.sizes() &&
                        grad_slot.sizes() == weight.sizes(),
                    "scores, flags and grad_slot must have weight's shape ", shape_string(weight.sizes()), ", got ",
                    shape_string(scores.sizes()), ", ", shape_string(flags.sizes()), " and ",
                    shape_string(grad_slot.sizes()));
  TORCH_CHECK_VALUE(flat_dense(scores) && same_order(grad_slot, scores),
                    "scores and grad_slot must be contiguous or channels_last, in one memory order (grad_slot is "
                    "written in place): was the model moved or converted (model.to(memory_format=...)) after the "
                    "GemMiner was made? Convert the model first, then create the GemMiner");
}

// The contract of a precomputed masked weight (ops/_contracts.py: precomputed_fits): weight's shape, dtype
// and device, in the scores' memory order.
void check_precomputed(const at::Tensor& masked, const at::Tensor& weight, const at::Tensor& scores) {
  TORCH_CHECK_TYPE(masked.scalar_type() == weight.scalar_type() && masked.device() == weight.device(), "masked must be ",
                   describe(weight), ", got ", describe(masked));
  TORCH_CHECK_VALUE(masked.sizes() == weight.sizes(), "masked must have the shape of weight ",
                    shape_string(weight.sizes()), ", got ", shape_string(masked.sizes()));
  TORCH_CHECK_VALUE(same_order(masked, scores),
                    "masked must be laid out like scores (contiguous or channels_last, one memory order): was the "
                    "model moved or converted (model.to(memory_format=...)) after the GemMiner was made? Convert the "
                    "model first, then create the GemMiner");
}

// The contract of a deferred backward's holder: the weight's dtype, on the CPU.
void check_held(const std::optional<at::Tensor>& held, const at::Tensor& weight) {
  if (!held.has_value()) return;
  TORCH_CHECK_TYPE(held->scalar_type() == weight.scalar_type() && held->device() == weight.device() &&
                       !held->requires_grad(),
                   "held must be ", describe(weight), " without requires_grad, got ", describe(*held));
}

at::Tensor masked_weight_autograd(const at::Tensor& weight, const at::Tensor& scores, const at::Tensor& flags,
                                  const at::Tensor& grad_slot, const at::Tensor& claimed, const at::Tensor& weight_slot,
                                  bool precomputed, const std::optional<at::Tensor>& held) {
  check_masked_weight(weight, scores, flags, grad_slot, claimed);
  if (precomputed) check_precomputed(weight_slot, weight, scores);
  check_held(held, weight);
  // scores is passed as is (not a copy): backward asks the leaf whether it has a .grad. The other
  // inputs are read in its memory order (no copy when they share it, as GemMiner's views do).
  return MaskedWeight::apply(in_order_of(weight, scores), scores, in_order_of(flags, scores), grad_slot, claimed,
                             weight_slot, precomputed, held);
}

// Without autograd (torch.inference_mode): computed, also when precomputed (the same values; no tensor
// here shares memory or a version counter with a caller's).
at::Tensor masked_weight_forward(const at::Tensor& weight, const at::Tensor& scores, const at::Tensor& flags,
                                 const at::Tensor& grad_slot, const at::Tensor& claimed, const at::Tensor& weight_slot,
                                 bool precomputed, const std::optional<at::Tensor>& held) {
  check_masked_weight(weight, scores, flags, grad_slot, claimed);
  if (precomputed) check_precomputed(weight_slot, weight, scores);
  check_held(held, weight);
  const auto order = flat_dense(weight) ? weight : weight.contiguous();
  return gemminer_mask(order, in_order_of(scores, order), in_order_of(flags, order));
}

}  // namespace
}  // namespace sparseticket

TORCH_LIBRARY_IMPL(sparseticket_cpu, Autograd, m) {
  m.impl("gemminer_masked_weight", &sparseticket::masked_weight_autograd);
}

TORCH_LIBRARY_IMPL(sparseticket_cpu, CPU, m) {
  m.impl("gemminer_masked_weight", &sparseticket::masked_weight_forward);
}
