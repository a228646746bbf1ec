"""stiv-export -> safetensors folder -> import: bit-exact, readable by PyTorch's safetensors,
samples equal to the checkpoint's, a stage starts from it, and the user errors."""
import json
import os

import jax
import numpy as np
import pytest

from experiments.configs import demo
from stiv_jax import export_format as fmt
from stiv_jax import sample
from stiv_jax import sampling
from stiv_jax.bench.sample import t2v_cond
from stiv_jax.data import contract as contract_lib
from stiv_jax.data.synthetic import write_synthetic_shards
from stiv_jax.models.encoders.standins import HashTextEncoder, PixelSpaceVAE
from stiv_jax.tools import export as export_tool
from stiv_jax.train import checkpoint as ckpt_lib
from stiv_jax.train import stages
from random_checkpoint import write_random_checkpoint


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
  """A workdir as training leaves it: config.json, the data's contract.json, one checkpoint
  whose EMA weights are random (non-zero)."""
  root = tmp_path_factory.mktemp("export")
  wd = str(root / "wd")
  data = str(root / "shards")
  manifest = write_synthetic_shards(data, num_videos=4, seed=0, vae=PixelSpaceVAE(4, 4),
                                    text_encoder=HashTextEncoder(16, 8), size=32, frames=(4,))
  config = demo.get_config("tiny,masked0")
  config.data.path = data
  config.model.mask_decoder_depth = 1  # a smaller graph: quicker compiles
  config.model.micro_conditions = False
  write_random_checkpoint(wd, config, step=3, seed=1)
  contract_lib.save_run_contract(wd, contract_lib.run_contract(manifest, data))
  return wd


@pytest.fixture(scope="module")
def exported(workdir, tmp_path_factory):
  out = str(tmp_path_factory.mktemp("out") / "export")
  summary = export_tool.export(workdir, out, shard_bytes=64 << 10)
  return out, summary


def test_layout_and_naming(exported, workdir):
  out, summary = exported
  with open(os.path.join(out, fmt.INDEX_FILE)) as f:
    index = json.load(f)
  files = sorted(set(index["weight_map"].values()))
  assert len(files) > 2 and files == summary["files"]
  assert files[0] == "model-00001-of-%05d.safetensors" % len(files)
  assert sorted(os.listdir(out)) == sorted(files + [fmt.INDEX_FILE, fmt.CONFIG_FILE,
                                                    fmt.CONTRACT_FILE])
  names = set(index["weight_map"])
  # Scanned stacks are unstacked per layer (the tiny model has 2 main blocks).
  assert {"blocks.0.spatial.q.kernel", "blocks.1.spatial.q.kernel", "adaln.kernel",
          "decoder.0.fc1.kernel", "cond.time.fc1.kernel", "patch.kernel"} <= names
  assert not any(n.startswith("blocks.spatial") for n in names)
  total = sum(os.path.getsize(os.path.join(out, f)) for f in files)
  assert index["metadata"]["total_size"] <= total
  assert index["metadata"]["step"] == 3 and index["metadata"]["naming"] == 1
  with open(os.path.join(out, fmt.CONTRACT_FILE)) as f:
    assert json.load(f) == contract_lib.load_run_contract(workdir)
  with open(os.path.join(out, fmt.CONFIG_FILE)) as f:
    assert json.load(f)["model"] == json.loads(ckpt_lib.config_json(
        ckpt_lib.load_config(workdir)))["model"]


def test_round_trip_is_bit_exact(exported, workdir):
  out, _ = exported
  restored = ckpt_lib.restore_ema(workdir)
  ckpt = {fmt.path_name(p): np.asarray(x) for p, x in
          jax.tree_util.tree_flatten_with_path(restored.params)[0]}
  back = fmt.load_numpy(out)
  assert sorted(back) == sorted(ckpt)
  for name, value in ckpt.items():
    assert back[name].dtype == value.dtype and back[name].shape == value.shape, name
    assert back[name].tobytes() == value.tobytes(), name
  # Stage init reads the same arrays from the folder as from the checkpoint.
  from_export = stages.load_source_params(out)
  from_ckpt = stages.load_source_params(workdir)
  assert all(from_export[n].tobytes() == from_ckpt[n].tobytes() for n in from_ckpt)


def test_pytorch_reads_the_folder(exported):
  out, _ = exported
  torch = pytest.importorskip("torch")
  from safetensors.torch import load_file
  with open(os.path.join(out, fmt.INDEX_FILE)) as f:
    weight_map = json.load(f)["weight_map"]
  tensors = {}
  for file in sorted(set(weight_map.values())):
    tensors.update(load_file(os.path.join(out, file)))
  assert set(tensors) == set(weight_map)
  q = fmt.load_numpy(out)["blocks/spatial/q/kernel"]
  assert tensors["blocks.1.spatial.q.kernel"].dtype == torch.float32
  np.testing.assert_array_equal(tensors["blocks.1.spatial.q.kernel"].numpy(), q[1])


def test_sample_from_export_equals_checkpoint(exported, workdir):
  out, _ = exported
  flags = ["--prompt=a", "--mesh=data=1,fsdp=8"]
  a = sample.load_source(sample.build_parser().parse_args([f"--workdir={workdir}"] + flags))
  b = sample.load_source(sample.build_parser().parse_args([f"--weights={out}"] + flags))
  assert b.run_record == a.run_record and b.config.model == a.config.model
  q = b.model.blocks.spatial.q.kernel.get_value()
  assert q.sharding.spec[1] == "fsdp"  # the export is read straight into the shardings
  scfg = sampling.SamplerConfig(steps=2)
  cond, null = t2v_cond(a.config.model, 1, int(a.config.text.max_length))
  x = a.sampler(scfg)(cond, null, seed=0)
  y = b.sampler(scfg)(cond, null, seed=0)
  assert np.abs(x).max() > 0 and x.tobytes() == y.tobytes()


def run_cli(argv, capsys):
  with pytest.raises(SystemExit) as e:
    export_tool.run(argv)
  err = capsys.readouterr().err.strip()
  assert e.value.code == 2 and len(err.splitlines()) == 1, err
  assert err.startswith("stiv-export: error:"), err
  return err


def test_user_errors(exported, workdir, tmp_path, capsys):
  out, _ = exported
  assert "exists and is not an empty folder" in run_cli(
      [f"--workdir={workdir}", f"--out={out}"], capsys)
  assert "not a LoRA run" in run_cli(
      [f"--workdir={workdir}", f"--out={tmp_path / 'm'}", "--merge"], capsys)
  assert "--shard-size" in run_cli(
      [f"--workdir={workdir}", f"--out={tmp_path / 'm'}", "--shard-size=lots"], capsys)
  assert "no such path" in run_cli([f"--workdir={tmp_path / 'none'}", f"--out={tmp_path}/o"],
                                   capsys)
  assert not os.path.exists(tmp_path / "m")
  # A damaged export: one tensor missing from the index names it.
  bad = tmp_path / "bad"
  os.makedirs(bad)
  for f in os.listdir(out):
    os.symlink(os.path.join(out, f), bad / f)
  with open(os.path.join(out, fmt.INDEX_FILE)) as f:
    index = json.load(f)
  del index["weight_map"]["blocks.1.fc2.kernel"]
  os.remove(bad / fmt.INDEX_FILE)
  (bad / fmt.INDEX_FILE).write_text(json.dumps(index))
  with pytest.raises(fmt.ExportError, match="blocks.1.fc2.kernel"):
    fmt.load_numpy(str(bad))


def test_console_script_is_declared():
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  with open(os.path.join(root, "setup.cfg")) as f:
    assert "stiv-export = stiv_jax.tools.export:run" in f.read()
