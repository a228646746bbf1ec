"""LoRA: adapter math against the Dense layer, targets, a real stiv-train run with a frozen
base (checkpoint holds adapters only, resume works), merged export == base + adapters."""
import copy
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest
from flax import nnx

from experiments.configs import demo
from stiv_jax import config_schema as schema
from stiv_jax import export_format as fmt
from stiv_jax import lora
from stiv_jax import sampling
from stiv_jax.data.synthetic import write_synthetic_shards
from stiv_jax.models.encoders.standins import HashTextEncoder, PixelSpaceVAE
from stiv_jax.tools import export as export_tool
from stiv_jax.train import checkpoint as ckpt_lib
from stiv_jax.train import loop
from stiv_jax.train import state as state_lib
from random_checkpoint import one_device_mesh, write_random_checkpoint

RANK = 4
SMALL = {"depth": 1, "mask_decoder_depth": 1, "micro_conditions": False}


def test_delta_is_the_low_rank_dense_update():
  """x @ (W + s A B) == x @ W + s (x @ A) @ B for a stacked kernel with 2 input dims."""
  rng = np.random.default_rng(0)
  layers, heads, kv, out, r, s = 3, 2, 8, 16, 4, 0.5
  w = rng.standard_normal((layers, heads, kv, out)).astype("f4")   # like attention 'o'
  a = rng.standard_normal((layers, heads, kv, r)).astype("f4")
  b = rng.standard_normal((layers, r, out)).astype("f4")
  x = rng.standard_normal((layers, 5, heads, kv)).astype("f4")
  merged = np.einsum("lnhk,lhko->lno", x, w + s * np.asarray(lora.delta(a, b, w.shape)))
  low_rank = np.einsum("lnhk,lhko->lno", x, w) + s * np.einsum(
      "lnr,lro->lno", np.einsum("lnhk,lhkr->lnr", x, a), b)
  np.testing.assert_allclose(merged, low_rank, rtol=1e-5, atol=1e-4)
  # Unstacked kernel (no layers axis): [in, out].
  w2, a2, b2 = w[0, 0], a[0, 0], b[0]
  # rtol 1e-5: two float32 matmul paths differ by 1.9e-6 relative on some CPUs.
  np.testing.assert_allclose(lora.delta(a2, b2, w2.shape), a2 @ b2, rtol=1e-5)


def test_targets_and_config_errors():
  model_cfg = schema.cpu_preset("tiny")[0]
  model = nnx.eval_shape(lambda: state_lib.build_model(model_cfg, 0))
  targets = lora.find_targets(model, schema.lora_config(rank=RANK))
  names = {t.name for t in targets}
  assert len(names) == 2 * (3 * 4 + 2)  # blocks + decoder: 3 attentions x qkvo + 2 FFN
  assert "blocks/spatial/q/kernel" in names and "decoder/fc2/kernel" in names
  assert not any(n.startswith("cond/") for n in names)
  o = next(t for t in targets if t.name == "blocks/cross/o/kernel")
  assert o.stacked and o.in_shape == (2, 32) and o.out_shape == (64,)
  with pytest.raises(ValueError, match="not Dense kernels"):
    lora.find_targets(model, schema.lora_config(rank=RANK, targets="spatial/q/"))
  with pytest.raises(ValueError, match="matches no Dense kernel"):
    lora.find_targets(model, schema.lora_config(rank=RANK, targets="nothing$"))
  for field, value in (("rank", -1), ("alpha", float("nan")), ("dropout", 1.0),
                       ("targets", "(")):
    with pytest.raises(ValueError, match=f"lora.{field}"):
      lora.validate_lora_config(schema.lora_config(**{field: value}))
  config = demo.get_config("tiny")
  config.lora.rank = RANK
  with pytest.raises(ValueError, match="init.sources"):
    lora.check_config(config)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
  """A base checkpoint, then `stiv-train` with LoRA on it: 2 steps, resumed to 4."""
  root = tmp_path_factory.mktemp("lora")
  base_wd, wd, data = str(root / "base"), str(root / "lora"), str(root / "shards")
  write_synthetic_shards(data, num_videos=16, seed=0, vae=PixelSpaceVAE(4, 4),
                         text_encoder=HashTextEncoder(16, 8), size=32, frames=(4,))
  config = demo.get_config("tiny,masked0")
  for field, value in SMALL.items():  # a smaller graph: quicker compiles
    config.model[field] = value
  write_random_checkpoint(base_wd, copy.deepcopy(config))
  config.data.path = data
  config.init.sources = ({"path": base_wd},)
  config.lora.rank = RANK
  config.optimizer.lr = 1e-2
  config.optimizer.warmup_steps = 0
  config.checkpoint.every_steps = 2
  config.checkpoint.async_save = False
  config.metrics.every_steps = 1
  config.metrics.tensorboard = False
  config.train.num_steps = 2
  first = loop.train(copy.deepcopy(config), wd)
  config.train.num_steps = 4
  second = loop.train(config, wd)
  return base_wd, wd, first, second


def test_training_moves_only_the_adapters(run):
  base_wd, wd, first, second = run
  assert first["step"] == 2 and second["step"] == 4  # the second run resumed from step 2
  restored = ckpt_lib.restore_ema(wd)
  source = ckpt_lib.restore_ema(base_wd)
  # The base is the source's EMA weights, bit for bit (frozen: not in the train state).
  for (p, x), y in zip(jax.tree_util.tree_flatten_with_path(restored.params)[0],
                       jax.tree.leaves(source.params)):
    assert np.asarray(x).tobytes() == np.asarray(y).tobytes(), fmt.path_name(p)
  # The adapters moved: B starts at zero.
  flat = lora.flat_adapters(restored.adapters)
  assert len(flat) == 28 and all(np.abs(np.asarray(v["b"])).max() > 0 for v in flat.values())
  # The checkpoint holds adapters, their optimizer state and EMA: adapter-sized arrays only.
  meta = ocp.PyTreeCheckpointer().metadata(os.path.join(wd, "checkpoints", "4", "state"))
  tree = meta.item_metadata.tree if hasattr(meta, "item_metadata") else meta.tree
  size = lambda x: int(np.prod(x.shape))  # noqa: E731
  adapters = sum(size(x) for x in jax.tree.leaves(restored.adapters))
  kernels = sum(int(np.prod(t.shape)) for t in
                lora.abstract_base(restored.config, one_device_mesh(), {}).targets)
  assert adapters < 0.25 * kernels
  by_name = {n: size(x) for n, x in
             ((fmt.path_name(p), x) for p, x in
              jax.tree_util.tree_flatten_with_path(restored.adapters)[0])}
  for key in ("params", "ema_params", "opt_state"):
    leaves = jax.tree_util.tree_flatten_with_path(tree[key])[0]
    assert sum(size(x) for _, x in leaves) <= 2.2 * adapters, key
    for p, x in leaves:  # each leaf mirrors one adapter (or is a scalar count)
      name = fmt.path_name(p)
      match = [n for n in by_name if name.endswith(n)]
      assert size(x) == 1 or (match and size(x) <= by_name[match[0]]), name
  paths = [fmt.path_name(p) for p, _ in jax.tree_util.tree_flatten_with_path(tree["params"])[0]]
  assert all(p.endswith(("/a", "/b")) for p in paths)


def test_merged_export_equals_base_plus_adapters(run, tmp_path):
  _, wd, _, _ = run
  merged_dir, unmerged_dir = str(tmp_path / "merged"), str(tmp_path / "unmerged")
  export_tool.export(wd, merged_dir, merge=True)
  summary = export_tool.export(wd, unmerged_dir)
  assert summary["lora"] == fmt.LORA_FILE and fmt.has_lora(unmerged_dir)
  restored = ckpt_lib.restore_ema(wd)
  # The unmerged export holds the same adapters (bit-exact) beside the base.
  mesh = one_device_mesh()
  config, _ = fmt.read_config(unmerged_dir)
  back = lora.flat_adapters(fmt.load_lora(unmerged_dir, config, mesh, {}))
  for name, ad in lora.flat_adapters(restored.adapters).items():
    for k in ("a", "b"):
      assert np.asarray(back[name][k]).tobytes() == np.asarray(ad[k]).tobytes(), name
  with open(os.path.join(merged_dir, fmt.CONFIG_FILE)) as f:
    assert json.load(f)["lora"]["rank"] == 0
  with pytest.raises(fmt.ExportError, match="--merge"):
    fmt.load_numpy(unmerged_dir)
  # Forward of the merged weights vs the base with the adapters applied inside the forward.
  merged_cfg, graphdef, state = fmt.load_sharded(merged_dir, mesh, {})
  base_graph, base_state = nnx.split(restored.model())
  rng = np.random.default_rng(0)
  m = restored.config.model
  x = jnp.asarray(rng.standard_normal((2, m.num_frames, m.latent_height, m.latent_width,
                                       m.latent_channels)), jnp.float32)
  t = jnp.asarray([0.3, 0.7])
  cond = {"text": jnp.asarray(rng.standard_normal((2, 8, m.text_dim)), jnp.float32),
          "text_mask": jnp.ones((2, 8), bool),
          "pooled": jnp.asarray(rng.standard_normal((2, m.text_dim)), jnp.float32),
          "micro": jnp.tile(jnp.asarray([32, 32, 0, 0, 1, 4], jnp.float32), (2, 1)),
          "cond_mask": jnp.zeros((2, m.num_frames), bool), "cond_latents": jnp.zeros_like(x)}
  forward = jax.jit(sampling.model_apply_fn(graphdef))
  merged = forward(state, x, t, cond)
  plain = forward(base_state, x, t, cond)
  unmerged = jax.jit(lora.make_apply_fn(base_graph, lora.scale(restored.config.lora)))(
      {"base": base_state, "adapters": restored.adapters}, x, t, cond)
  np.testing.assert_allclose(merged, unmerged, rtol=1e-4, atol=1e-5)
  assert np.abs(np.asarray(merged) - np.asarray(plain)).max() > 1e-3  # the adapters matter


def test_stiv_sample_uses_the_adapters_unmerged(run, tmp_path):
  from stiv_jax import sample
  _, wd, _, _ = run
  summary = sample.main([f"--workdir={wd}", "--prompt=a red circle moving right", "--steps=1",
                         f"--out={tmp_path / 's.mp4'}", "--no-progress", "--mesh=fsdp=8"])
  assert summary["lora"] is True and summary["step"] == 4
  assert os.path.exists(summary["files"][0])


NON_RED = ["a green circle moving right", "a blue square moving up", "a yellow triangle moving left",
           "a cyan circle moving down", "a magenta square moving right", "a white triangle moving up",
           "a green square moving down", "a blue circle moving left"]


def _red_share(summary) -> float:
  """Share of sampled videos whose object the synthetic detector reads as red."""
  from stiv_jax import video_io
  from stiv_jax.eval import synthetic
  colors = [synthetic.detect(video_io.read_video(f)).color for f in summary["files"]]
  return sum(c == "red" for c in colors) / len(colors)


def test_lora_on_one_color_shifts_samples(tmp_path):
  """The user path of a subset fine-tune: a base trained on every color, `stiv-shards subset`
  of the red clips, `stiv-train` with LoRA on it, `stiv-sample` of prompts naming OTHER colors:
  the fine-tuned samples turn red where the base's do not (the synthetic detector reads it)."""
  from stiv_jax import sample
  from stiv_jax.tools import shards as shards_cli
  data, red = str(tmp_path / "all"), str(tmp_path / "red")
  # The first corpus's shape sizes (half-size 0.12-0.18 of the frame), which this 40-step
  # fine-tune was sized on: with the demo's larger shapes (synthetic.RADIUS_RANGE) the same
  # steps shift 1 of 8 samples to red (sixth session).
  write_synthetic_shards(data, num_videos=160, seed=0, vae=PixelSpaceVAE(4, 4),
                         text_encoder=HashTextEncoder(16, 8), size=32, frames=(4,),
                         fade_fraction=0.0, radius_range=(0.12, 0.18))
  assert shards_cli.main(["subset", data, f"--output={red}", "--caption=\\bred\\b"]) == 0
  config = demo.get_config("tiny,masked0")
  config.model.prediction = "data"
  config.data.path = data
  config.optimizer.lr = 3e-3
  config.optimizer.warmup_steps = 0
  config.checkpoint.async_save = False
  config.metrics.tensorboard = False
  config.train.num_steps = 100
  config.checkpoint.every_steps = 100
  config.metrics.every_steps = 50
  config.sampling.guidance = 3.0
  base_wd, lora_wd = str(tmp_path / "base"), str(tmp_path / "lora")
  loop.train(copy.deepcopy(config), base_wd)
  config.data.path = red
  config.init.sources = ({"path": base_wd},)
  config.lora.rank = RANK
  config.optimizer.min_dim_size_to_factor = RANK  # the adapters' second moments factored
  config.optimizer.lr = 1e-2
  config.train.num_steps = 40
  config.checkpoint.every_steps = 40
  loop.train(config, lora_wd)
  prompts = tmp_path / "prompts.txt"
  prompts.write_text("\n".join(NON_RED) + "\n")
  shares = {}
  for name, wd in (("base", base_wd), ("lora", lora_wd)):
    summary = sample.main([f"--workdir={wd}", f"--prompts-file={prompts}", "--steps=10",
                           f"--out={tmp_path / name / 's.mp4'}", "--no-progress"])
    shares[name] = _red_share(summary)
  print("red share of non-red prompts", shares)
  assert shares["base"] <= 0.25 and shares["lora"] >= 0.75, shares
