#include "truncation_plan.h"

#include <torch/csrc/autograd/variable.h>

#include "common.h"
#include "ops.h"

namespace sparseticket {

NativeTruncationPlan::NativeTruncationPlan(std::vector<at::Tensor> params, std::vector<at::Tensor> keep,
                                           std::vector<at::Tensor> l1_params, double scale, double l1, bool of_grads)
    : params_(std::move(params)), keep_(std::move(keep)), l1_params_(std::move(l1_params)), scale_(scale), l1_(l1),
      of_grads_(of_grads), device_(params_.empty() ? at::Device(at::kCPU) : params_[0].device()) {
  TORCH_CHECK_VALUE(keep_.size() == params_.size(), "keep must have one mask per parameter");
  TORCH_CHECK_VALUE(l1 == 0.0 ? l1_params_.empty() : l1_params_.size() == params_.size(),
                    "l1_params must have one tensor per parameter when l1 != 0, none otherwise");
  TORCH_CHECK_VALUE(device_.is_cpu(), "a native TruncationPlan runs on CPU tensors, got ", device_);
  required_order_.reserve(params_.size());
  for (size_t i = 0; i < params_.size(); ++i) {
    const bool elementwise = params_[i].dim() > 1 && (keep_[i].numel() == params_[i].numel() ||
                                                      (l1 != 0.0 && l1_params_[i].numel() == params_[i].numel()));
    required_order_.push_back(elementwise ? memory_order(params_[i]) : MemoryOrder::kStrided);
  }
  grads_now_.reserve(params_.size());
  keep_now_.reserve(params_.size());
  l1_now_.reserve(params_.size());
}

void NativeTruncationPlan::check_order(const at::Tensor& target, size_t i, const char* what) const {
  const auto order = memory_order(target);
  TORCH_CHECK_VALUE(order != MemoryOrder::kStrided, what, i, "] must be contiguous or channels_last (it is updated "
                    "in place); call .contiguous() on it first");
  TORCH_CHECK_VALUE(required_order_[i] == MemoryOrder::kStrided || order == required_order_[i], what, i,
                    "] changed memory format (contiguous <-> channels_last) after the plan was made: its mask "
                    "follows the old layout; make a new plan (create the method after model.to(memory_format=...))");
}

void NativeTruncationPlan::run() {
  if (params_.empty()) return;
  TORCH_CHECK(params_[0].device() == device_, "TruncationPlan: the parameters moved from ", device_, " to ",
              params_[0].device(), " after the plan was made; make a new plan");
  grads_now_.clear();
  keep_now_.clear();
  l1_now_.clear();
  const bool use_l1 = l1_ != 0.0;
  for (size_t i = 0; i < params_.size(); ++i) {
    if (!of_grads_) {  // the values themselves, as `with torch.no_grad(): p.mul_(mask)` would (version bumped)
      check_order(params_[i], i, "params[");
      torch::autograd::impl::bump_version(params_[i]);
      grads_now_.push_back(params_[i]);
      keep_now_.push_back(keep_[i]);
      if (use_l1) l1_now_.push_back(l1_params_[i]);
      continue;
    }
    const at::Tensor& grad = params_[i].grad();
    if (!grad.defined()) continue;
    // PyTorch keeps a gradient's shape, dtype and device equal to its parameter's; not its layout.
    check_order(grad, i, "grads[");  // params[i].grad
    grads_now_.push_back(grad);
    keep_now_.push_back(keep_[i]);
    if (use_l1) l1_now_.push_back(l1_params_[i]);
  }
  truncate_grads_unchecked(grads_now_, keep_now_, l1_now_, scale_, l1_);
}

}  // namespace sparseticket
