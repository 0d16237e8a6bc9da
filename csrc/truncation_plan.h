// TruncationPlan's C++ side: truncate_grads_ on the current gradients of a fixed list of parameters,
// checked once when made. A call reads every parameter's .grad in C++ and runs the kernel: no
// Python list, no dispatcher, no per-tensor argument conversion (those cost ~10x the kernel for the
// 53 BN layers of ResNet-50).
#pragma once

#include <ATen/ATen.h>

#include <vector>

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
  std::vector<at::Tensor> params_, keep_, l1_params_;
  double scale_, l1_;
  bool of_grads_;
  at::Device device_;
  std::vector<at::Tensor> grads_now_, keep_now_, l1_now_;  // reused between calls
};

}  // namespace sparseticket
