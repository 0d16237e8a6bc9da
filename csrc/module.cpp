// Python module sparseticket._C. Importing it runs the static TORCH_LIBRARY registrations of the
// other translation units (ops in the "sparseticket_cpu" namespace) and binds the classes that
// per-step hooks call directly (NativeTruncationPlan).
#include <torch/extension.h>

#include "truncation_plan.h"

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "sparseticket C++ CPU kernels (ops registered with torch.library as sparseticket_cpu)";
  pybind11::class_<sparseticket::NativeTruncationPlan>(m, "NativeTruncationPlan")
      .def(pybind11::init<std::vector<at::Tensor>, std::vector<at::Tensor>, std::vector<at::Tensor>, double, double,
                          bool>(),
           pybind11::arg("params"), pybind11::arg("keep"), pybind11::arg("l1_params"), pybind11::arg("scale"),
           pybind11::arg("l1"), pybind11::arg("of_grads") = true)
      .def("__call__", &sparseticket::NativeTruncationPlan::run);
}
