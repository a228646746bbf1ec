"""Checkpoints that cannot rot silently: sealed with checksums, damaged ones skipped (one line)
for the newest good one, never deleted; non-finite parameters named; validate decodes records
against the manifest's shapes; launcher dry runs write nothing."""
from __future__ import annotations

import json
import os
import shutil

import jax
import numpy as np
import pytest

from experiments.configs import demo
from helpers import tree_hashes
from stiv_jax import sharding as shd
from stiv_jax.data import reader, writer
from stiv_jax.train import checkpoint as ckpt_lib
from stiv_jax.train import integrity
from stiv_jax.train import optimizer as opt_lib
from stiv_jax.train import state as state_lib
from stiv_jax.train import step as step_lib

STEPS = (2, 4, 6)


def _config():
  c = demo.get_config("tiny")
  c.model.depth = 1
  c.model.mask_decoder_depth = 1
  c.mesh.data = 1
  c.checkpoint.keep_last = 5
  c.checkpoint.async_save = True
  return c


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
  """A workdir with checkpoints at steps 2, 4, 6 (params shifted by the step, so each differs)."""
  c = _config()
  root = str(tmp_path_factory.mktemp("ck"))
  mesh = shd.make_mesh(c.mesh, jax.devices()[:1])
  rules = shd.rules_from_config(c.mesh.rules)
  tx = opt_lib.make_optimizer(c.optimizer)
  make = lambda: state_lib.build_model(c.model, c.seed)  # noqa: E731
  _, state, _ = state_lib.create_train_state(make, tx, mesh, rules, step_lib.compiler_options(c))
  _, target, _ = state_lib.abstract_train_state(make, tx, mesh, rules)
  ck = ckpt_lib.Checkpointer(root, c.checkpoint, with_data=False)
  states = {}
  for s in STEPS:
    states[s] = state.replace(step=state.step + s,
                              params=jax.tree.map(lambda x, s=s: x + s, state.params))
    ck.save(s, states[s], meta={"config": {"step": s}}, force=True)
  ck.close()
  return dict(root=root, config=c, target=target, states=states)


def _copy(saved, tmp_path) -> tuple[str, ckpt_lib.Checkpointer]:
  root = str(tmp_path / "wd")
  shutil.copytree(saved["root"], root)
  return root, ckpt_lib.Checkpointer(root, saved["config"].checkpoint, with_data=False)


def _largest_file(step_dir: str) -> str:
  files = [os.path.join(d, n) for d, _, names in os.walk(step_dir) for n in names]
  return max(files, key=os.path.getsize)


def _restore(ck, saved, **kw):
  lines = []
  r = ck.restore_latest_good(saved["target"], on_skip=lines.append, **kw)
  return r, lines


def _assert_state(a, b):
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_finished_checkpoints_are_sealed_and_whole(saved):
  ck = ckpt_lib.Checkpointer(saved["root"], saved["config"].checkpoint, with_data=False)
  assert ck.all_steps() == list(STEPS)
  for s in STEPS:
    assert integrity.is_sealed(ck.step_dir(s)) and integrity.verify(ck.step_dir(s)) is None
  assert ck.read_meta(6) == {"config": {"step": 6}}
  r, lines = _restore(ck, saved)
  assert (r.step, r.skipped, lines) == (6, [], [])
  _assert_state(r.state, saved["states"][6])


def test_flipped_bytes_fall_back_to_the_previous_checkpoint(saved, tmp_path):
  root, ck = _copy(saved, tmp_path)
  victim = _largest_file(ck.step_dir(6))
  with open(victim, "r+b") as f:   # 4 KB of flipped bits inside the weights
    f.seek(min(512, os.path.getsize(victim) // 4))
    block = f.read(4096)
    f.seek(-len(block), 1)
    f.write(bytes(b ^ 0xFF for b in block))
  r, lines = _restore(ck, saved)
  assert r.step == 4 and [s for s, _ in r.skipped] == [6]
  assert len(lines) == 1 and "\n" not in lines[0]
  assert victim in lines[0] and "corrupted" in lines[0]
  _assert_state(r.state, saved["states"][4])
  moved = ck.quarantine([6])   # the run can save step 6 again; nothing was deleted
  assert ck.all_steps() == [2, 4] and os.path.isdir(moved[0])
  assert os.path.basename(moved[0]).startswith("skipped-6-")


@pytest.mark.parametrize("damage", ["truncate", "delete_metadata", "unsealed_delete_metadata"])
def test_truncated_or_missing_files_fall_back(saved, tmp_path, damage):
  _, ck = _copy(saved, tmp_path)
  step_dir = ck.step_dir(6)
  if damage == "truncate":
    victim = _largest_file(step_dir)
    with open(victim, "r+b") as f:
      f.truncate(os.path.getsize(victim) // 2)
  else:
    os.remove(os.path.join(step_dir, "state", "_METADATA"))
    if damage.startswith("unsealed"):   # no checksums: the decode itself must fail cleanly
      os.remove(os.path.join(step_dir, integrity.CHECKSUM_FILE))
  r, lines = _restore(ck, saved)
  assert r.step == 4 and len(lines) == 1 and "\n" not in lines[0]
  want = {"truncate": "truncated", "delete_metadata": "_METADATA: missing",
          "unsealed_delete_metadata": "Skipping checkpoint"}[damage]
  assert want in lines[0], lines[0]
  assert len(lines[0]) < 600


def test_no_good_checkpoint_says_so_in_one_line_and_deletes_nothing(saved, tmp_path):
  root, ck = _copy(saved, tmp_path)
  for s in STEPS:
    os.remove(os.path.join(ck.step_dir(s), "state", "_METADATA"))
  before = tree_hashes(root)
  with pytest.raises(ckpt_lib.CheckpointError) as e:
    _restore(ck, saved)
  msg = str(e.value)
  assert "\n" not in msg and "no good checkpoint" in msg and "nothing was deleted" in msg
  assert all(f"step {s}:" in msg for s in STEPS)
  assert tree_hashes(root) == before


def test_explicit_checkpoint_is_verified_not_replaced(saved, tmp_path):
  root, ck = _copy(saved, tmp_path)
  os.remove(os.path.join(ck.step_dir(4), "state", "_METADATA"))
  with pytest.raises(ckpt_lib.CheckpointError, match="step 4: .*_METADATA: missing"):
    _restore(ck, saved, steps=[4])


def test_nonfinite_parameters_are_an_error_naming_the_parameter(saved, tmp_path):
  c = saved["config"]
  root = str(tmp_path / "nan")
  bad = saved["states"][2]
  leaves, treedef = jax.tree.flatten(bad.params)
  leaves[0] = leaves[0].at[(0,) * leaves[0].ndim].set(np.nan)
  ck = ckpt_lib.Checkpointer(root, c.checkpoint, with_data=False)
  ck.save(2, bad.replace(params=jax.tree.unflatten(treedef, leaves)), force=True)
  ck.close()
  path = jax.tree_util.tree_flatten_with_path(bad.params)[0][0][0]
  names = [str(getattr(k, "key", getattr(k, "name", k))) for k in path]
  with pytest.raises(ckpt_lib.CheckpointError, match="1 of .* NaN or Inf") as e:
    _restore(ckpt_lib.Checkpointer(root, c.checkpoint, with_data=False), saved)
  assert "/".join(n for n in names if n != "value") in str(e.value)


def _shard_dataset(path):
  from stiv_jax.data import schema
  rng = np.random.default_rng(0)
  with writer.ShardWriter(str(path)) as w:
    for i in range(6):
      w.write(schema.ClipRecord(
          latents=rng.standard_normal((2, 4, 4, 2)).astype(np.float32),
          text=rng.standard_normal((5, 8)).astype(np.float32), text_mask=np.ones(5, bool),
          pooled=rng.standard_normal(8).astype(np.float32),
          micro={"orig_height": 16, "orig_width": 16, "crop_top": 0, "crop_left": 0,
                 "stride": 1, "num_frames": 2}, clip_id=f"c{i}"))


def test_validate_decodes_records_against_the_promised_shapes(tmp_path):
  """A manifest and index that agree on a latent shape the records do not have fail."""
  _shard_dataset(tmp_path)
  assert reader.validate_dataset(str(tmp_path))["num_records"] == 6
  index_path = next(str(tmp_path / f) for f in os.listdir(tmp_path) if f.endswith(".index.json"))
  with open(index_path) as f:
    index = json.load(f)
  index["shapes"] = {"2x4x4": [2, 4, 4, 3]}   # 3 channels promised, the records hold 2
  writer.atomic_write_text(index_path, json.dumps(index))
  writer.write_manifest(str(tmp_path))       # manifest and index now agree with each other
  with pytest.raises(reader.DatasetError, match=r"latents \[2, 4, 4, 2\] but .* \[2, 4, 4, 3\]"):
    reader.validate_dataset(str(tmp_path))


def test_launcher_dry_run_writes_nothing_and_missing_flags_are_one_line(tmp_path):
  import subprocess
  import sys
  repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  launch = os.path.join(repo, "experiments", "launch.py")
  cfg = f"--config={repo}/experiments/configs/t2v.py:XL"
  for target, flag in (("tpu-vm", "--tpu_name"), ("gke", "--image")):
    p = subprocess.run([sys.executable, launch, cfg, f"--target={target}", "--dry_run"],
                       cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert p.returncode == 2 and p.stderr.strip().count("\n") == 0, p.stderr
    assert p.stderr.startswith(f"launch.py: error: {flag}: required for --target={target}")
  p = subprocess.run([sys.executable, launch, cfg, "--target=tpu-vm", "--tpu_name=t",
                      "--zone=z", "--dry_run"], cwd=tmp_path, capture_output=True, text=True,
                     timeout=300)
  assert p.returncode == 0 and "gcloud compute tpus tpu-vm ssh t" in p.stdout
  assert os.listdir(tmp_path) == []   # no ./workdir/xm records
