"""Simulate `landmarks serve-ray` at scale: cache hit rate and memory per replica for many replicas and
categories under Zipf-distributed popularity (docs/scale.md).

The routing is Ray Serve's multiplexed routing (ray/serve/_private/request_router), simplified:
a request for category c goes to the less loaded of two random replicas among those holding c that
have room (fewer than --max-ongoing requests in flight); if none holds c or all holders are full,
to the less loaded of two random replicas with room among those holding the fewest categories, which
folds c (a miss) and evicts its least recently used category beyond --max-categories. Time runs in
ticks of one forward pass; each tick brings load x replicas x max-ongoing requests. The router's view
of who holds what is exact here (Ray's lags by its push interval), so real hit rates are a bit lower.

    python scripts/ray_scale_sim.py                          # the table in docs/scale.md
    python scripts/ray_scale_sim.py --max-categories 16 64 --zipf 0.8 1.1 --json out.json
"""

from __future__ import annotations

import argparse
import json
import random
from collections import OrderedDict

import numpy as np

# bytes measured in this repository (docs/scale.md): one folded category = the whole network's weights
# (backend.nbytes of a prepared adapter), one adapter as the registry keeps it, the core
SIZES = {
    "shipped (cpu core, 64 px), onnxruntime": {"folded": 18_876_096, "adapter": 626_040, "core": 3_176_692},
    "shipped (cpu core, 64 px), torchscript": {"folded": 6_292_472, "adapter": 626_040, "core": 3_176_692},
    "paper (6.24 M params, fp32), torchscript": {"folded": 24_943_160, "adapter": 2_200_104, "core": 24_943_160},
}


def simulate(replicas: int, categories: int, max_categories: int, zipf: float, load: float, max_ongoing: int,
             ticks: int, seed: int) -> dict:
    rng = random.Random(seed)
    weights = 1.0 / np.arange(1, categories + 1) ** zipf
    probs = weights / weights.sum()
    np_rng = np.random.default_rng(seed)
    held: list[OrderedDict[int, None]] = [OrderedDict() for _ in range(replicas)]
    holders: dict[int, set[int]] = {}
    per_tick = int(load * replicas * max_ongoing)
    hits = misses = 0
    for tick in range(ticks):
        count = tick >= ticks // 2  # the first half warms the caches up
        ongoing = [0] * replicas
        for c in np_rng.choice(categories, size=per_tick, p=probs):
            c = int(c)
            room = [r for r in holders.get(c, ()) if ongoing[r] < max_ongoing]
            if room:
                pick = min(rng.sample(room, min(2, len(room))), key=ongoing.__getitem__)
                held[pick].move_to_end(c)
                hits += count
            else:
                free = [r for r in range(replicas) if ongoing[r] < max_ongoing]
                fewest = min(len(held[r]) for r in free)
                pool = [r for r in free if len(held[r]) == fewest]
                pick = min(rng.sample(pool, min(2, len(pool))), key=ongoing.__getitem__)
                held[pick][c] = None
                holders.setdefault(c, set()).add(pick)
                if len(held[pick]) > max_categories:
                    old, _ = held[pick].popitem(last=False)
                    holders[old].discard(pick)
                misses += count
            ongoing[pick] += 1
    top = probs[:10].sum()
    covered = sum(1 for s in holders.values() if s)
    mass_covered = float(sum(probs[c] for c, s in holders.items() if s))
    return {
        "replicas": replicas, "categories": categories, "max_categories_per_replica": max_categories,
        "zipf": zipf, "load": load, "requests": hits + misses,
        "hit_rate": hits / max(1, hits + misses),
        "categories_held_somewhere": covered, "traffic_share_of_held_categories": mass_covered,
        "top10_traffic_share": float(top),
        "replicas_holding_the_top_category": len(holders.get(0, ())),
    }


def memory_mb(max_categories: int, categories: int, sizes: dict) -> dict:
    folded = max_categories * sizes["folded"]
    registry = categories * sizes["adapter"]  # every replica's registry keeps every adapter today
    return {"folded_mb": folded / 2**20, "registry_mb": registry / 2**20, "core_mb": sizes["core"] / 2**20,
            "total_mb": (folded + registry + sizes["core"]) / 2**20}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--replicas", type=int, default=100)
    parser.add_argument("--categories", type=int, default=10_000)
    parser.add_argument("--max-categories", type=int, nargs="+", default=[16, 64])
    parser.add_argument("--zipf", type=float, nargs="+", default=[0.8, 1.1], help="popularity exponents s")
    parser.add_argument("--load", type=float, default=0.7, help="share of the replicas' capacity in use")
    parser.add_argument("--max-ongoing", type=int, default=8, help="requests a replica takes per tick")
    parser.add_argument("--ticks", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args()
    rows = []
    print("| max categories / replica | Zipf s | hit rate | categories held | their traffic share | "
          "replicas holding the top category |")
    print("|---:|---:|---:|---:|---:|---:|")
    for n in args.max_categories:
        for s in args.zipf:
            r = simulate(args.replicas, args.categories, n, s, args.load, args.max_ongoing, args.ticks, args.seed)
            rows.append(r)
            print(f"| {n} | {s} | {r['hit_rate']:.1%} | {r['categories_held_somewhere']:,} | "
                  f"{r['traffic_share_of_held_categories']:.1%} | {r['replicas_holding_the_top_category']} |")
    print("\nmemory per replica (MiB): folded categories + registry (all adapters) + core")
    print("| max categories / replica | weights | folded | registry | total |")
    print("|---:|---|---:|---:|---:|")
    memory = []
    for n in args.max_categories:
        for name, sizes in SIZES.items():
            m = memory_mb(n, args.categories, sizes)
            memory.append({"max_categories_per_replica": n, "weights": name, **m})
            print(f"| {n} | {name} | {m['folded_mb']:,.0f} | {m['registry_mb']:,.0f} | {m['total_mb']:,.0f} |")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"args": vars(args), "routing": rows, "memory": memory}, fh, indent=1)


if __name__ == "__main__":
    main()
