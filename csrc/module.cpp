// Python module entry for sparseticket._C. Importing it runs the static TORCH_LIBRARY
// registrations of the other translation units (ops in the "sparseticket_cpu" namespace).
#include <Python.h>

extern "C" {
PyMODINIT_FUNC PyInit__C(void) {
  static struct PyModuleDef module_def = {
      PyModuleDef_HEAD_INIT, "_C", "sparseticket C++ CPU kernels (registered with torch.library)", -1, nullptr};
  return PyModule_Create(&module_def);
}
}
