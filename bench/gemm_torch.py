"""torch.mm (MKL) GFLOP/s on the GEMM shapes of models/benches/gemm.rs, the PyTorch side
of `make bench-gemm`. Usage: python3 bench/gemm_torch.py [THREADS]"""
import sys
import time

import torch

torch.set_num_threads(int(sys.argv[1]) if len(sys.argv) > 1 else 2)
# (m, n, k), as in models/benches/gemm.rs
SHAPES = [(64, 3136, 576), (256, 3136, 64), (64, 3136, 256), (128, 784, 1152),
          (256, 1568, 2304), (512, 392, 4608), (64, 576, 3136), (576, 3136, 64),
          (2048, 392, 512)]
for m, n, k in SHAPES:
    a, b, c = torch.randn(m, k), torch.randn(k, n), torch.empty(m, n)
    for _ in range(3):
        torch.mm(a, b, out=c)
    iters = max(3, int(2e9 / (m * n * k)))
    t = time.perf_counter()
    for _ in range(iters):
        torch.mm(a, b, out=c)
    dt = (time.perf_counter() - t) / iters
    print(f"torch m{m} n{n} k{k}: {2 * m * n * k / dt / 1e9:.1f} GFLOP/s")
