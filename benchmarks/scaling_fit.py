"""Time of the approach-3 fit with bootstrap intervals (not a test): 250 runs x 1000 resamples.

  python -m benchmarks.scaling_fit [--runs 250] [--bootstrap 1000] [--out runs/benchmarks/scaling_fit.json]

Runs: a synthetic isoFLOP study (25 budgets x 10 sizes) drawn from Chinchilla's published L(N, D) with 0.5%
noise. Prints wall time and this process's CPU time (less sensitive to other load on the machine) for the
point fit (L-BFGS from the grid's best starts) and the bootstrap, and whether the truth is inside the intervals.
"""

import argparse
import json
import os
import platform
import time

import numpy as np

from train import scaling


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--runs", type=int, default=250, help="a multiple of 10 (10 sizes per budget)")
  parser.add_argument("--bootstrap", type=int, default=1000)
  parser.add_argument("--out", default="runs/benchmarks/scaling_fit.json")
  args = parser.parse_args()
  runs = scaling.synthetic_runs(np.logspace(17, 21, args.runs // 10), 10, seed=0)
  timings = {}
  for bootstrap in (0, args.bootstrap):
    wall, cpu = time.perf_counter(), time.process_time()
    fit = scaling.fit_parametric(runs["params"], runs["tokens"], runs["loss"], bootstrap=bootstrap)
    timings[bootstrap] = (time.perf_counter() - wall, time.process_time() - cpu)
  truth = {**scaling.CHINCHILLA, "a": 0.28 / 0.62, "b": 0.34 / 0.62}
  inside = {k: fit.intervals[k][0] <= v <= fit.intervals[k][1] for k, v in truth.items()}
  result = {"runs": len(runs["loss"]), "bootstrap": args.bootstrap,
            "point_fit_wall_s": timings[0][0], "point_fit_cpu_s": timings[0][1],
            "total_wall_s": timings[args.bootstrap][0], "total_cpu_s": timings[args.bootstrap][1],
            "truth_inside_95": inside, "fit": fit.to_json(), "host": platform.node(), "cpus": os.cpu_count(),
            "load_average": os.getloadavg()}
  print(f"{result['runs']} runs x {args.bootstrap} resamples: {result['total_wall_s']:.1f} s wall, "
        f"{result['total_cpu_s']:.1f} s CPU (point fit alone {timings[0][0]:.1f} s wall, {timings[0][1]:.1f} s CPU); "
        f"load average {result['load_average'][0]:.1f}; truth inside the 95% intervals: {inside}")
  os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
  with open(args.out, "w") as f:
    json.dump(result, f, indent=2)


if __name__ == "__main__":
  main()
