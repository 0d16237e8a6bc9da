// TruncationPlan's C++ side: truncate_grads_ on the current gradients of a fixed list of parameters,
// checked once when made. A call reads every parameter's .grad in C++ and runs the kernel: no
// Python list, no dispatcher, no per-tensor argument conversion (those cost ~10x the kernel for the
// 53 BN layers of ResNet-50).
#pragma once

#include <ATen/ATen.h>

#include <vector>

#include "common.h"

namespace sparseticket {

class NativeTruncationPlan {
 public:
  // `params`, `keep` and `l1_params` as checked by sparseticket.ops.TruncationPlan (the contract of
  // truncate_grads_, with params in the grads' place); `l1_params` empty when l1 == 0. `of_grads`:
  // truncate each parameter's .grad; otherwise the parameters' own values (IMP's weight masking).
  NativeTruncationPlan(std::vector<at::Tensor> params, std::vector<at::Tensor> keep, std::vector<at::Tensor> l1_params,
                       double scale, double l1, bool of_grads);

  // Truncates the current gradients (or values) in place; parameters without a gradient are left out.
  void run();

 private:
  // ValueError unless `target` (parameter i's gradient or values) is flat-dense in the required order.
  void check_order(const at::Tensor& target, size_t i, const char* what) const;

  std::vector<at::Tensor> params_, keep_, l1_params_;
  double scale_, l1_;
  bool of_grads_;
  at::Device device_;
  std::vector<at::Tensor> grads_now_, keep_now_, l1_now_;  // reused between calls
  // Per parameter: the memory order its per-element mask (or sign tensor) was made in, which the
  // gradient (or the values) must still have; kStrided where any flat-dense order will do.
  std::vector<MemoryOrder> required_order_;
};

}  // namespace sparseticket
