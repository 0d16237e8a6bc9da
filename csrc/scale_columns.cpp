// EarlyBERT slimming's hot path: a Linear weight whose columns are scaled by coefficients (each one
// repeated `width` times: one per attention head, or one per FFN neuron), with its backward, as one
// C++ autograd op, sparseticket_cpu::scale_columns(weight, coefficients, width, weight_slot).
//
// The Python expression (weight * coefficients.repeat_interleave(width)) costs three weight-sized
// passes with fresh allocations per step (forward product, then grad * coefficients and grad *
// weight in backward). Here:
// - forward writes into `weight_slot`, memory the parametrization keeps, whenever nothing else
//   references it (as gemminer_masked_weight does; a fresh tensor otherwise);
// - backward makes one pass over the incoming gradient and the weight: it sums grad * weight per
//   coefficient (per-thread partial sums) and scales the gradient by the coefficients in place when
//   nothing else holds it, which becomes the weight's gradient without another allocation.
// float32 weights and coefficients only; the parametrization falls back to the Python expression otherwise.
#include <torch/autograd.h>
#include <torch/library.h>

#include "common.h"
#include "ops.h"

namespace sparseticket {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

void check_scale_columns(const at::Tensor& weight, const at::Tensor& coefficients, int64_t width) {
  TORCH_CHECK_TYPE(weight.scalar_type() == at::kFloat && weight.device().is_cpu(),
                   "weight must be float32 on cpu, got ", describe(weight));
  TORCH_CHECK_TYPE(coefficients.scalar_type() == at::kFloat && coefficients.device().is_cpu(),
                   "coefficients must be float32 on cpu, got ", describe(coefficients));
  TORCH_CHECK_VALUE(weight.dim() == 2, "weight must be 2-D (a Linear weight), got shape ",
                    shape_string(weight.sizes()));
  TORCH_CHECK_VALUE(width >= 1, "width must be >= 1, got ", width);
  TORCH_CHECK_VALUE(coefficients.dim() == 1 && coefficients.size(0) * width == weight.size(1),
                    "coefficients must have weight.shape[1] / width = ", weight.size(1), " / ", width,
                    " entries, got shape ", shape_string(coefficients.sizes()));
}

// out[r, j] = weight[r, j] * coefficients[j / width]
void scale_into(const at::Tensor& weight, const at::Tensor& coefficients, int64_t width, const at::Tensor& out) {
  const int64_t rows = weight.size(0), cols = weight.size(1);
  const float* w = weight.data_ptr<float>();
  const float* c = coefficients.data_ptr<float>();
  float* o = out.data_ptr<float>();
  at::parallel_for(0, rows, std::max<int64_t>(1, kGrain / std::max<int64_t>(cols, 1)), [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const float* wr = w + r * cols;
      float* orow = o + r * cols;
      if (width == 1) {  // one coefficient per column: a loop that vectorises
        for (int64_t j = 0; j < cols; ++j) orow[j] = wr[j] * c[j];
        continue;
      }
      for (int64_t k = 0; k < cols / width; ++k) {
        const float scale = c[k];
        for (int64_t j = k * width; j < (k + 1) * width; ++j) orow[j] = wr[j] * scale;
      }
    }
  });
}

at::Tensor scaled_into_slot(const at::Tensor& weight, const at::Tensor& coefficients, int64_t width,
                            const at::Tensor& slot) {
  auto out = reuse_or_allocate(slot, weight);
  scale_into(weight, coefficients, width, out);
  return out;
}

class ScaleColumns : public torch::autograd::Function<ScaleColumns> {
 public:
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& weight, const at::Tensor& coefficients,
                            int64_t width, const at::Tensor& slot) {
    ctx->save_for_backward({weight, coefficients});
    ctx->saved_data["width"] = width;
    return scaled_into_slot(weight, coefficients, width, slot);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad_outputs) {
    const auto saved = ctx->get_saved_variables();
    const at::Tensor& weight = saved[0];
    const at::Tensor& coefficients = saved[1];
    const int64_t width = ctx->saved_data["width"].toInt();
    const bool need_weight = ctx->needs_input_grad(0), need_coefficients = ctx->needs_input_grad(1);
    at::Tensor grad = std::move(grad_outputs[0]);
    if (grad.scalar_type() != at::kFloat || !grad.is_contiguous()) grad = grad.to(at::kFloat).contiguous();
    // Scale in place only a gradient nobody else can see (one reference, its own storage).
    const bool in_place = grad.use_count() == 1 && !grad.is_view() && grad.storage().use_count() == 1;
    at::Tensor grad_weight = need_weight ? (in_place ? grad : at::empty_like(grad)) : at::Tensor();
    const int64_t rows = weight.size(0), cols = weight.size(1), groups = cols / width;
    const float* g = grad.data_ptr<float>();
    const float* w = weight.data_ptr<float>();
    const float* c = coefficients.data_ptr<float>();
    float* gw = need_weight ? grad_weight.data_ptr<float>() : nullptr;
    const int64_t blocks = need_coefficients ? num_blocks(rows * cols, kGrain) : 1;
    std::vector<float> partial(need_coefficients ? blocks * groups : 0, 0.f);
    parallel_blocks(rows, blocks, [&](int64_t block, int64_t begin, int64_t end) {
      float* sums = need_coefficients ? partial.data() + block * groups : nullptr;
      for (int64_t r = begin; r < end; ++r) {
        const float* gr = g + r * cols;
        const float* wr = w + r * cols;
        float* out = gw != nullptr ? gw + r * cols : nullptr;
        if (width == 1) {  // one coefficient per column (FFN neurons): a loop that vectorises
          if (sums != nullptr) for (int64_t j = 0; j < cols; ++j) sums[j] += gr[j] * wr[j];
          if (out != nullptr) for (int64_t j = 0; j < cols; ++j) out[j] = gr[j] * c[j];
          continue;
        }
        for (int64_t k = 0; k < groups; ++k) {  // one coefficient per head: `width` columns each
          const float scale = c[k];
          float sum = 0.f;
          for (int64_t j = k * width; j < (k + 1) * width; ++j) {
            sum += gr[j] * wr[j];
            if (out != nullptr) out[j] = gr[j] * scale;
          }
          if (sums != nullptr) sums[k] += sum;
        }
      }
    });
    at::Tensor grad_coefficients;
    if (need_coefficients) {
      grad_coefficients = at::empty({groups}, coefficients.options());
      float* gc = grad_coefficients.data_ptr<float>();
      for (int64_t k = 0; k < groups; ++k) {
        double total = 0.0;
        for (int64_t b = 0; b < blocks; ++b) total += static_cast<double>(partial[b * groups + k]);
        gc[k] = static_cast<float>(total);
      }
    }
    return {grad_weight, grad_coefficients, at::Tensor(), at::Tensor()};
  }
};

at::Tensor scale_columns_autograd(const at::Tensor& weight, const at::Tensor& coefficients, int64_t width,
                                  const at::Tensor& slot) {
  check_scale_columns(weight, coefficients, width);
  return ScaleColumns::apply(weight.contiguous(), coefficients.contiguous(), width, slot);
}

at::Tensor scale_columns_forward(const at::Tensor& weight, const at::Tensor& coefficients, int64_t width,
                                 const at::Tensor& slot) {
  check_scale_columns(weight, coefficients, width);
  return scaled_into_slot(weight.contiguous(), coefficients.contiguous(), width, slot);
}

}  // namespace
}  // namespace sparseticket

TORCH_LIBRARY_IMPL(sparseticket_cpu, Autograd, m) {
  m.impl("scale_columns", &sparseticket::scale_columns_autograd);
}

TORCH_LIBRARY_IMPL(sparseticket_cpu, CPU, m) {
  m.impl("scale_columns", &sparseticket::scale_columns_forward);
}
