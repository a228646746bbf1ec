"""The latent contract's checks on their own: buckets vs patches and the model's default size,
unset fields filled from the data, mismatches named with both values, sampling defaults."""
import argparse

import pytest

from stiv_jax import config_schema as schema
from stiv_jax import sample as sample_cli
from stiv_jax.data import contract

MICRO = {"orig_height": {"mode": 720, "min": 480, "max": 1080},
         "orig_width": {"mode": 1280, "min": 640, "max": 1920},
         "crop_top": {"mode": 0, "min": 0, "max": 12}, "crop_left": {"mode": 8, "min": 0, "max": 8},
         "stride": {"mode": 3, "min": 1, "max": 3}, "num_frames": {"mode": 4, "min": 4, "max": 4}}


def manifest(*keys, channels=4):
  return {"buckets": {k: {"count": 8, "shape": [*map(int, k.split("x")), channels],
                          "micro": MICRO} for k in keys},
          "num_records": 8 * len(keys),
          "contract": {"version": 1,
                       "vae": {"kind": "pixel", "spatial_factor": 4, "latent_channels": 4,
                               "scaling_factor": 0.5, "shift_factor": 0.1},
                       "text": {"kind": "hash", "dim": 16, "max_length": 8, "pooling": "mean"}}}


def config(**model):
  c = schema.train_config()
  c.model, c.vae, c.text = schema.cpu_preset("tiny", **model)
  c.vae.spatial_factor = c.vae.latent_channels = None
  return c


def test_unset_fields_come_from_the_data_and_are_noted():
  c = config()
  notes = contract.resolve_train_config(c, manifest("4x8x8", "4x6x10"), "D")
  assert (c.vae.scaling_factor, c.vae.shift_factor) == (0.5, 0.1)
  assert (c.vae.spatial_factor, c.vae.latent_channels) == (4, 4)
  assert any("vae.scaling_factor = 0.5 (from D)" in n for n in notes)


@pytest.mark.parametrize("keys,model,pattern", [
    (("4x8x8", "4x7x8"), {}, r"bucket 4x7x8 has latents 7x8, not divisible by model.patch_s=2"),
    (("4x8x8", "3x8x8"), {}, r"bucket 3x8x8 has 3 latent frames, not divisible by .*patch_t=2"),
    (("4x6x10",), {}, r"\[4, 8, 8\] .* is not a bucket of D; its buckets are \['4x6x10'\]"),
])
def test_buckets_the_model_cannot_take_fail_naming_the_bucket(keys, model, pattern):
  with pytest.raises(contract.ContractError, match=pattern):
    contract.resolve_train_config(config(**model), manifest(*keys), "D")


def test_images_go_through_a_video_model_as_static_clips():
  contract.resolve_train_config(config(), manifest("4x8x8", "1x8x8"), "D")


@pytest.mark.parametrize("section,field,value,pattern", [
    ("vae", "scaling_factor", 1.0, r"vae.scaling_factor: the config says 1.0 .* made with 0.5"),
    ("vae", "latent_channels", 8, r"vae.latent_channels: the config says 8 .* made with 4"),
    ("text", "dim", 32, r"text.dim: the config says 32 but the captions at D have 16"),
    ("text", "max_length", 77, r"text.max_length: the config says 77 .* have 8"),
    ("text", "kind", "clip", r"text.kind: the config says 'clip' .* encoded with 'hash'"),
])
def test_encoder_mismatches_name_both_values(section, field, value, pattern):
  c = config()
  c[section][field] = value
  with pytest.raises(contract.ContractError, match=pattern):
    contract.resolve_train_config(c, manifest("4x8x8"), "D")


def test_a_dataset_without_contract_warns():
  m = manifest("4x8x8")
  del m["contract"]
  [note] = contract.resolve_train_config(config(), m, "D")
  assert note.startswith("WARNING") and "no latent contract" in note


def _args(**kw):
  return argparse.Namespace(**{"frame_stride": None, "orig_size": None, **kw})


def test_sampling_micro_defaults_are_the_training_buckets():
  run = contract.run_contract(manifest("4x8x8", "4x6x10"), "/data")
  micro, src = sample_cli.micro_defaults(_args(), run, (4, 6, 10), 4)
  assert src == "training bucket 4x6x10"
  assert micro == {"orig_height": 720.0, "orig_width": 1280.0, "crop_top": 0.0,
                   "crop_left": 8.0, "stride": 3.0}
  micro, src = sample_cli.micro_defaults(_args(), run, (8, 6, 10), 4)   # other length, same HW
  assert src == "training bucket 4x6x10"
  micro, _ = sample_cli.micro_defaults(_args(frame_stride=2.0, orig_size="256x512"), run,
                                       (4, 8, 8), 4)
  assert (micro["stride"], micro["orig_height"], micro["orig_width"]) == (2.0, 256.0, 512.0)
  with pytest.raises(sample_cli.UserError, match="latent size 5x5 was never trained"):
    sample_cli.micro_defaults(_args(), run, (4, 5, 5), 4)
