"""What building the C++ kernels without ``-march=native`` costs: Gem-Miner's fused score step
(``gemminer_step_``, the most vectorisable kernel) built native and portable, timed in turns.

Both variants come from the first-use build (``sparseticket._kernels.jit``) into one cache folder
(the first run builds each once, about 2 minutes apiece on 2 cores); each timing runs in a fresh
process that loads one variant only.

    python benchmarks/portable_cost.py [--elements 4000000] [--rounds 3] [--cache DIR] [--out FILE]

The table is printed and written to ``benchmarks/PORTABLE_COST.md`` (the one place the figure lives).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile

TIMING = r"""
import json, sys, time, torch
torch.set_num_threads(int(sys.argv[2]))
from sparseticket._kernels.jit import build_kernels
module, reason, path = build_kernels()
assert module is not None, reason
n = int(sys.argv[1])
generator = torch.Generator().manual_seed(0)
scores = torch.rand(n, generator=generator)
grad = torch.randn(n, generator=generator)
momentum = torch.zeros(n)
flags = torch.rand(n, generator=generator) > 0.1
step = torch.ops.sparseticket_cpu.gemminer_step_
for _ in range(3):
    step(scores, grad, momentum, flags, 0.1, 0.9, 1e-4)
times = []
for _ in range(20):
    start = time.perf_counter()
    step(scores, grad, momentum, flags, 0.1, 0.9, 1e-4)
    times.append(time.perf_counter() - start)
times.sort()
print(json.dumps({"median_s": times[len(times) // 2], "library": str(path)}))
"""


def time_variant(portable: bool, elements: int, threads: int, cache: str) -> dict:
    """Median seconds of one gemminer_step_ over ``elements`` scores, in a fresh process."""
    environment = {**os.environ, "SPARSETICKET_DISABLE_CPP": "1", "SPARSETICKET_CACHE": cache,
                   "SPARSETICKET_PORTABLE": "1" if portable else "0"}
    result = subprocess.run([sys.executable, "-W", "ignore::RuntimeWarning", "-c", TIMING, str(elements),
                             str(threads)], env=environment, capture_output=True, text=True, check=False)
    if result.returncode:
        raise SystemExit(f"timing failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--elements", type=int, default=4_000_000, help="scores per step (default 4M)")
    parser.add_argument("--rounds", type=int, default=3, help="native/portable pairs timed in turns")
    parser.add_argument("--cache", default=os.path.join(tempfile.gettempdir(), "sparseticket-portable-cost"),
                        help="first-use build cache holding both variants")
    parser.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "PORTABLE_COST.md"),
                        help="where the table is written (default benchmarks/PORTABLE_COST.md)")
    arguments = parser.parse_args()
    lines = ["# What a portable build of the C++ kernels costs", "",
             "Written by `python benchmarks/portable_cost.py` (do not edit by hand). Gem-Miner's score step "
             f"(`gemminer_step_`) over {arguments.elements:,} scores, built with `-march=native` (the install-time "
             "and first-use default) and with `SPARSETICKET_PORTABLE=1`; median of 20 steps per process, the "
             f"median over {arguments.rounds} native/portable pairs timed in turns. CPU: {_cpu_name()}.", "",
             "| threads | native ms | portable ms | portable / native |", "|---|---|---|---|"]
    print("\n".join(lines), flush=True)
    for threads in (1, 2):
        native, portable = [], []
        for _ in range(arguments.rounds):
            native.append(time_variant(False, arguments.elements, threads, arguments.cache)["median_s"])
            portable.append(time_variant(True, arguments.elements, threads, arguments.cache)["median_s"])
        n, p = statistics.median(native), statistics.median(portable)
        lines.append(f"| {threads} | {n * 1e3:.2f} | {p * 1e3:.2f} | {p / n:.2f}x |")
        print(lines[-1], flush=True)
    with open(arguments.out, "w") as handle:
        handle.write("\n".join(lines) + "\n")
    print(f"written to {arguments.out}")


def _cpu_name() -> str:
    """The CPU's model name (Linux), else what platform knows."""
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


if __name__ == "__main__":
    main()
