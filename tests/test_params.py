"""Parameter counts of the paper sizes (abstract evaluation, no memory) and the stiv-params CLI."""
import json
import subprocess
import sys

import pytest

from experiments.configs import stiv as stiv_config
from stiv_jax.tools.params import count_params

RANGES = {"XL": (0.70e9, 0.85e9), "XXL": (1.65e9, 1.95e9), "M": (8.1e9, 9.1e9)}


@pytest.mark.parametrize("size", sorted(RANGES))
def test_paper_sizes_in_range(size):
  counts = count_params(stiv_config.get_config(size).model)
  lo, hi = RANGES[size]
  assert lo <= counts["total"] <= hi, counts["total"]
  parts = counts["by_part"]
  assert parts["blocks.temporal_attention"] > 0 and parts["mask_decoder.ffn"] > 0
  assert sum(parts.values()) == counts["total"]


def test_image_model_has_no_temporal_attention():
  counts = count_params(stiv_config.get_config("XL,image").model)
  assert "blocks.temporal_attention" not in counts["by_part"]


def test_cli_prints_json_last_line():
  out = subprocess.run([sys.executable, "-m", "stiv_jax.tools.params",
                        "--config=experiments/configs/stiv.py:small"],
                       capture_output=True, text=True, check=True)
  last = json.loads(out.stdout.strip().splitlines()[-1])
  assert last["total"] == count_params(stiv_config.get_config("small").model)["total"]
