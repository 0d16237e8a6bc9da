// The sparseticket_cpu kernels (registered in registration.cpp; schemas there).
#pragma once

#include <ATen/ATen.h>

#include <optional>
#include <tuple>

namespace sparseticket {

void truncate_grads_(at::TensorList grads, at::TensorList keep, at::TensorList params, double scale, double l1);
// truncate_grads_ without the checks, for callers that checked once (the TruncationPlan): CPU,
// contiguous grads of one float dtype, bool masks per channel or per element, params (of one float
// dtype, grads' shapes) only when l1 != 0.
void truncate_grads_unchecked(at::TensorList grads, at::TensorList keep, at::TensorList params, double scale,
                              double l1);

at::Tensor pack_mask(const at::Tensor& mask);
at::Tensor unpack_mask(const at::Tensor& packed, int64_t count);
std::tuple<at::Tensor, at::Tensor> mask_distances(const at::Tensor& importance, const at::Tensor& threshold,
                                                  const at::Tensor& history,
                                                  const std::optional<at::Tensor>& static_runs);

at::Tensor kth_value(at::TensorList values, int64_t k);
at::Tensor digit_histogram(at::TensorList values, int64_t shift, int64_t prefix);

at::Tensor gemminer_mask(const at::Tensor& weight, const at::Tensor& scores, const at::Tensor& flags);
// gemminer_mask written into `out` (contiguous, weight's shape and dtype).
void gemminer_mask_into(const at::Tensor& weight, const at::Tensor& scores, const at::Tensor& flags,
                        const at::Tensor& out);
std::tuple<at::Tensor, at::Tensor> gemminer_mask_backward(const at::Tensor& grad, const at::Tensor& weight,
                                                          const at::Tensor& scores, const at::Tensor& flags,
                                                          bool need_weight, bool need_scores);
// The scores' gradient of gemminer_mask_backward written into `out` (contiguous, scores' dtype).
void gemminer_mask_backward_scores_into(const at::Tensor& grad, const at::Tensor& weight, const at::Tensor& flags,
                                        const at::Tensor& out);
// With weights (masked_out both or neither) the same pass writes masked_out = gemminer_mask(weights, new scores,
// flags).
at::Tensor gemminer_step_(const at::Tensor& scores, const at::Tensor& grads, const at::Tensor& momentum_buffer,
                          const at::Tensor& flags, double lr, double momentum, double l2,
                          const std::optional<at::Tensor>& weights, const std::optional<at::Tensor>& masked_out);
// gemminer_step_ whose gradient is given as the masked weights' gradients, one tensor per layer (their flat
// concatenation in memory order lines up with the flat scores): the scores' gradient masked_grads * weights
// is formed in the same pass (GemMiner's deferred backward: no pass per layer in the backward).
at::Tensor gemminer_step_from_masked_grads_(const at::Tensor& scores, at::TensorList masked_grads,
                                            const at::Tensor& momentum_buffer, const at::Tensor& flags, double lr,
                                            double momentum, double l2, const at::Tensor& weights,
                                            const std::optional<at::Tensor>& masked_out);

// One torch.optim step over a list of parameters with the pruned entries (masks False) of weights and state
// set to 0 (optim.cpp); masks empty = a dense step, else all bool (one per entry) or all packed (uint8,
// ceil(numel / 8) bytes, bit j of byte i = entry 8i+j in the parameter's memory order). Both check the op's
// contract themselves.
void masked_sgd_(at::TensorList params, at::TensorList grads, at::TensorList momentum_buffers, at::TensorList masks,
                 double lr, double weight_decay, double momentum, double dampening, bool nesterov, bool maximize,
                 bool first_step);
void masked_adam_(at::TensorList params, at::TensorList grads, at::TensorList exp_avgs, at::TensorList exp_avg_sqs,
                  at::TensorList max_exp_avg_sqs, at::TensorList masks, double lr, double beta1, double beta2,
                  double eps, double weight_decay, double step, bool decoupled, bool maximize);

}  // namespace sparseticket
