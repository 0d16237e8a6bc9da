"""The C++ sources of the CPU kernels, installed as ``sparseticket._csrc``: the first-use build
(``sparseticket._kernels.jit``) compiles them when no install-time ``sparseticket._C`` loads."""
