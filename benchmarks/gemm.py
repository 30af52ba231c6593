"""GEMM benchmark: qbench's kernels against fp32/bf16 and the best CPU peers, side by side in one run.

    python benchmarks/gemm.py [--shapes 1x4096x4096,minilm] [--repeats 100] [--json out.json] [--quick]

The same as `qbench bench gemm`; the code is qbench/bench/gemm.py (see its docstring for the method).
"""
from qbench.bench.gemm import main

if __name__ == "__main__":
    main(prog="benchmarks/gemm.py")
