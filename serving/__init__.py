"""The gRPC inference server: registry, folded-weight cache, batching, servicers, bench.

OpenMP spin time. PyTorch's OpenMP runtime on Linux (libgomp) keeps its worker threads spinning
for a while after each parallel region (GOMP_SPINCOUNT, default 300,000 spins: milliseconds).
After a forward pass that spinning holds a core while the reply is built, sent and the next
request decoded; on a 2-core machine that is half of it. 20,000 spins still cover the gaps
between the ops of one forward pass. Measured with `python scripts/server_ab.py` (two servers
alternating call by call, 64 px adapter, 2-core AMD EPYC): p50 at concurrency 1 20.5 ms against
22.0 ms with the default, the forward itself unchanged (16.4 ms); 3,000 spins made the forward
slower (19.4 ms). libgomp reads the variable once, when torch is loaded, so it is set here, and
`landmarks serve` / `landmarks bench` import this package before anything loads torch
(`landmarks.cli`); an operator's own GOMP_SPINCOUNT wins.
"""

import os

os.environ.setdefault("GOMP_SPINCOUNT", "20000")
