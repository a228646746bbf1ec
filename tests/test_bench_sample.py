"""`stiv-bench sample` end to end at the unit-test model: its JSON contract and placements."""
import json
import os
import subprocess
import sys


def test_sample_bench_reports_both_placements_and_the_same_placement_ratio():
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  out = subprocess.run(
      [sys.executable, "-m", "stiv_jax.bench", "sample", "--preset=tiny", "--steps=2",
       "--repeats=1", "--cpu-devices=2"],
      capture_output=True, text=True, env=env, timeout=600, check=True)
  r = json.loads(out.stdout.strip().splitlines()[-1])
  assert r["benchmark"] == "sample" and r["devices"] == 2
  assert set(r["s_per_sample"]) == {"batched/mesh", "separate/mesh", "batched/one_device",
                                    "separate/one_device"}
  assert all(v > 0 for v in r["s_per_sample"].values())
  assert r["s_per_sample_batched"] == min(r["s_per_sample"]["batched/mesh"],
                                          r["s_per_sample"]["batched/one_device"])
  assert abs(r["ratio_best_vs_best"] / (r["s_per_sample_batched"] / r["s_per_sample_separate"])
             - 1) < 0.05
  # The headline compares the two at the same placement (the mesh), not two devices vs one.
  s = r["s_per_sample"]
  assert r["placement"] == "mesh" and r["ratio"] == r["ratio_same_placement"]["mesh"]
  assert abs(r["ratio"] / (s["batched/mesh"] / s["separate/mesh"]) - 1) < 0.05
  assert set(r["ratio_same_placement"]) == {"mesh", "one_device"}
