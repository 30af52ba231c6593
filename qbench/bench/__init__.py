"""Speed benchmarks that print ratios measured side by side in one run (`qbench bench gemm`)."""
