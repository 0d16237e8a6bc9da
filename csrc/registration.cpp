// Schemas and kernels of the sparseticket_cpu operator namespace. The kernels are registered as
// CompositeExplicitAutograd so that calls with empty tensor lists dispatch too; each kernel checks
// that its tensors are on the CPU.
#include <torch/library.h>

#include "ops.h"

TORCH_LIBRARY(sparseticket_cpu, m) {
  m.def("truncate_grads_(Tensor(a!)[] grads, Tensor[] keep, Tensor[] params, float scale, float l1) -> ()");
  m.def("pack_mask(Tensor mask) -> Tensor");
  m.def("unpack_mask(Tensor packed, int count) -> Tensor");
  m.def("kth_value(Tensor[] values, int k) -> Tensor");
  m.def("digit_histogram(Tensor[] values, int shift, int prefix) -> Tensor");
  m.def("mask_distances(Tensor importance, Tensor threshold, Tensor history, Tensor(a!)? static_runs) "
        "-> (Tensor, Tensor)");
  m.def("gemminer_mask(Tensor weight, Tensor scores, Tensor flags) -> Tensor");
  m.def("gemminer_mask_backward(Tensor grad, Tensor weight, Tensor scores, Tensor flags, bool need_weight, "
        "bool need_scores) -> (Tensor, Tensor)");
  m.def("gemminer_step_(Tensor(a!) scores, Tensor grads, Tensor(b!) momentum_buffer, Tensor flags, float lr, "
        "float momentum, float l2, Tensor? weights=None, Tensor(c!)? masked_out=None) -> Tensor");
  m.def("gemminer_step_from_masked_grads_(Tensor(a!) scores, Tensor[] masked_grads, Tensor(b!) momentum_buffer, "
        "Tensor flags, float lr, float momentum, float l2, Tensor weights, Tensor(c!)? masked_out=None) -> Tensor");
  // gemminer_mask with its straight-through backward in C++ (gemminer_autograd.cpp): GemMiner's hot path.
  // precomputed: weight_slot already holds the masked weight, returned without computing.
  m.def("gemminer_masked_weight(Tensor weight, Tensor scores, Tensor flags, Tensor grad_slot, Tensor claimed, "
        "Tensor weight_slot, bool precomputed=False, Tensor(a!)? held=None) -> Tensor");
  // EarlyBERT slimming's column scaling with its backward in C++ (scale_columns.cpp).
  m.def("masked_sgd_(Tensor(a!)[] params, Tensor[] grads, Tensor(b!)[] momentum_buffers, Tensor[] masks, float lr, "
        "float weight_decay, float momentum, float dampening, bool nesterov, bool maximize, bool first_step) -> ()");
  m.def("masked_adam_(Tensor(a!)[] params, Tensor[] grads, Tensor(b!)[] exp_avgs, Tensor(c!)[] exp_avg_sqs, "
        "Tensor(d!)[] max_exp_avg_sqs, Tensor[] masks, float lr, float beta1, float beta2, float eps, "
        "float weight_decay, float step, bool decoupled, bool maximize) -> ()");
  m.def("scale_columns(Tensor weight, Tensor coefficients, int width, Tensor weight_slot) -> Tensor");
}

TORCH_LIBRARY_IMPL(sparseticket_cpu, CompositeExplicitAutograd, m) {
  m.impl("truncate_grads_", &sparseticket::truncate_grads_);
  m.impl("pack_mask", &sparseticket::pack_mask);
  m.impl("unpack_mask", &sparseticket::unpack_mask);
  m.impl("kth_value", &sparseticket::kth_value);
  m.impl("digit_histogram", &sparseticket::digit_histogram);
  m.impl("mask_distances", &sparseticket::mask_distances);
  m.impl("gemminer_mask", &sparseticket::gemminer_mask);
  m.impl("gemminer_mask_backward", &sparseticket::gemminer_mask_backward);
  m.impl("gemminer_step_", &sparseticket::gemminer_step_);
  m.impl("gemminer_step_from_masked_grads_", &sparseticket::gemminer_step_from_masked_grads_);
  m.impl("masked_sgd_", &sparseticket::masked_sgd_);
  m.impl("masked_adam_", &sparseticket::masked_adam_);
}
