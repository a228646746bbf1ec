"""The latent contract: what made a shard dataset's latents, and the checks that hold runs to it.

A dataset's manifest records the encoders (`contract`: the VAE's kind, weights hash, spatial
factor, channels and the scaling/shift factors actually applied; the text encoder's kind, width,
max length, pooling, weights and tokenizer identity; the empty prompt's encoding) and, per bucket,
the latent shape and the micro-conditions the records hold (stride, original size, crops:
mode / min / max). `resolve_train_config` checks a run's config against it before anything
compiles, filling fields the config leaves unset (None factors, empty weight paths) and failing
with both values named; the run keeps the resolved config and a copy of the contract in its
workdir, from which sampling takes its factors, stride and sizes.
"""
from __future__ import annotations

import json
import os
from typing import Any, Mapping

import numpy as np

from stiv_jax.data import writer as writer_lib
from stiv_jax.micro import MICRO_CONDITIONS

CONTRACT_VERSION = 1
RUN_CONTRACT_FILE = "contract.json"   # a workdir's copy (sampling reads it)
_FACTOR_TOL = 1e-9


class ContractError(ValueError):
  """A config that disagrees with the data it trains on (names the field and both values)."""


def encoders_record(vae: Any, text_encoder: Any) -> dict[str, Any]:
  """The contract of latents made by `vae` with captions encoded by `text_encoder`."""
  return {"version": CONTRACT_VERSION, "vae": vae.identity(), "text": text_encoder.identity()}


def load_empty_prompt(root: str, contract: Mapping[str, Any]) -> dict[str, np.ndarray] | None:
  """The stored empty-prompt encoding {'text' [L, D], 'text_mask' [L], 'pooled' [D]} (CRC
  checked), or None when the dataset has none."""
  entry = contract.get("empty_prompt")
  if not entry:
    return None
  path = os.path.join(root, entry["file"])
  if not os.path.exists(path):
    raise ContractError(f"{path}: listed in the manifest's contract but missing")
  crc = writer_lib.file_crc32c(path)
  if crc != entry["crc32c"]:
    raise ContractError(f"{path}: checksum {crc} != manifest {entry['crc32c']}")
  with np.load(path) as z:
    return {k: z[k] for k in ("text", "text_mask", "pooled")}


# ------------------------------------------------------------------------------ buckets


def bucket_shapes(manifest: Mapping[str, Any]) -> dict[str, tuple[int, ...]]:
  """{bucket key 'TxHxW': latent shape (T, H, W, C)} of a manifest."""
  return {k: tuple(int(x) for x in v["shape"]) for k, v in manifest["buckets"].items()}


def check_buckets(model_cfg: Any, manifest: Mapping[str, Any], where: str) -> None:
  """Every bucket must fit the model's patches; the model's own latent shape must be a bucket."""
  pt, ps = int(model_cfg.patch_t), int(model_cfg.patch_s)
  shapes = bucket_shapes(manifest)
  for key, (t, h, w, c) in shapes.items():
    if h % ps or w % ps:
      raise ContractError(f"{where}: bucket {key} has latents {h}x{w}, not divisible by "
                          f"model.patch_s={ps}; re-encode it or change the patch")
    if t % pt and not (t == 1 and pt > 1):
      raise ContractError(f"{where}: bucket {key} has {t} latent frames, not divisible by "
                          f"model.patch_t={pt}")
    if c != int(model_cfg.latent_channels):
      raise ContractError(f"model.latent_channels: the config says {model_cfg.latent_channels} "
                          f"but bucket {key} of {where} has {c} channels")
  own = (int(model_cfg.num_frames), int(model_cfg.latent_height), int(model_cfg.latent_width))
  if "x".join(map(str, own)) not in shapes:
    raise ContractError(
        f"model latent [T, H, W] = {list(own)} (model.num_frames, latent_height, latent_width) "
        f"is not a bucket of {where}; its buckets are {sorted(shapes)}; set them to one of "
        "those (the default sampling size)")


def bucket_micro(manifest: Mapping[str, Any], key: str) -> dict[str, float]:
  """Micro-condition defaults of a bucket: what its records held most often."""
  entry = manifest["buckets"].get(key)
  if entry is None:
    raise ContractError(f"bucket {key}: not in the training data; buckets are "
                        f"{sorted(manifest['buckets'])}")
  stats = entry.get("micro")
  if not stats:
    raise ContractError(f"bucket {key}: the manifest records no micro-conditions (shards "
                        "written before schema 1.1); pass them explicitly")
  return {name: float(stats[name]["mode"]) for name in MICRO_CONDITIONS}


# ------------------------------------------------------------------------------ encoders


def _differs(a: Any, b: Any) -> bool:
  if isinstance(a, (int, float)) and isinstance(b, (int, float)):
    return abs(float(a) - float(b)) > _FACTOR_TOL
  return a != b


def _resolve_factor(section: Any, name: str, field: str, recorded: Any, where: str,
                    notes: list[str]) -> None:
  value = section[field]
  if value is None:
    section[field] = recorded
    notes.append(f"{name}.{field} = {recorded!r} (from {where})")
  elif _differs(value, recorded):
    raise ContractError(f"{name}.{field}: the config says {value!r} but the latents at {where} "
                        f"were made with {recorded!r}; set --config.{name}.{field}={recorded!r} "
                        "(or None to take it from the data)")


def _resolve_weights(section: Any, name: str, field: str, recorded: Mapping[str, Any] | None,
                     where: str, notes: list[str], check_hash: bool = True) -> None:
  """An empty path takes the recorded one; a given path must hold the recorded weights."""
  from stiv_jax.models.encoders import identity
  if not recorded:
    return
  path = section[field]
  if not path:
    section[field] = recorded["path"]
    notes.append(f"{name}.{field} = {recorded['path']!r} (from {where})")
    path = recorded["path"]
  if not check_hash:
    return
  if not os.path.exists(path):
    raise ContractError(f"{name}.{field}: {path} does not exist (the latents at {where} were "
                        f"made with {recorded['path']}, sha256 {recorded['sha256'][:12]})")
  same, now = identity.same_weights(recorded, path)
  if not same:
    raise ContractError(f"{name}.{field}: {path} has sha256 {now[:12]} but the latents at "
                        f"{where} were made with {recorded['path']} (sha256 "
                        f"{recorded['sha256'][:12]}); point it at those weights")


def resolve_vae(vae_cfg: Any, recorded: Mapping[str, Any], where: str,
                check_files: bool = True) -> list[str]:
  """Checks / fills a `vae` section against a contract's VAE record; -> notes of what it set."""
  notes: list[str] = []
  if vae_cfg.kind != recorded["kind"]:
    raise ContractError(f"vae.kind: the config says {vae_cfg.kind!r} but the latents at {where} "
                        f"were made with {recorded['kind']!r}; set --config.vae.kind="
                        f"{recorded['kind']}")
  for field in ("spatial_factor", "latent_channels", "scaling_factor", "shift_factor"):
    _resolve_factor(vae_cfg, "vae", field, recorded[field], where, notes)
  if recorded["kind"] == "kl":
    if bool(vae_cfg.sample) != bool(recorded.get("sample", False)):
      notes.append(f"vae.sample = {vae_cfg.sample} differs from prep "
                   f"({recorded.get('sample')}); only new encodes are affected")
    _resolve_weights(vae_cfg, "vae", "path", recorded.get("weights"), where, notes,
                     check_files)
  return notes


def resolve_text(text_cfg: Any, recorded: Mapping[str, Any], where: str,
                 check_files: bool = True) -> list[str]:
  """Checks / fills a `text` section against a contract's text-encoder record."""
  notes: list[str] = []
  if text_cfg.kind != recorded["kind"]:
    raise ContractError(f"text.kind: the config says {text_cfg.kind!r} but the captions at "
                        f"{where} were encoded with {recorded['kind']!r}; set "
                        f"--config.text.kind={recorded['kind']}")
  for field, key in (("dim", "dim"), ("max_length", "max_length")):
    if int(text_cfg[field]) != int(recorded[key]):
      raise ContractError(f"text.{field}: the config says {text_cfg[field]} but the captions at "
                          f"{where} have {recorded[key]}; set --config.text.{field}="
                          f"{recorded[key]}")
  if "pooling" in text_cfg and recorded.get("pooling") is not None:
    _resolve_factor(text_cfg, "text", "pooling", recorded["pooling"], where, notes)
  _resolve_weights(text_cfg, "text", "path", recorded.get("weights"), where, notes,
                   check_files)
  tok = recorded.get("tokenizer")
  if tok and text_cfg.get("tokenizer") and check_files:
    from stiv_jax.models.encoders import identity
    if os.path.abspath(text_cfg.tokenizer) != tok.get("path") and tok.get("sha256"):
      now = identity.weights_identity(text_cfg.tokenizer)["sha256"]
      if now != tok["sha256"]:
        raise ContractError(f"text.tokenizer: {text_cfg.tokenizer} (sha256 {now[:12]}) is not "
                            f"the tokenizer the captions at {where} were encoded with "
                            f"({tok.get('path')}, sha256 {tok['sha256'][:12]})")
  return notes


# ------------------------------------------------------------------------------ runs


def resolve_train_config(config: Any, manifest: Mapping[str, Any], where: str,
                         check_files: bool = True) -> list[str]:
  """Holds a train config to its data before compiling: model sizes vs buckets, VAE and text
  sections vs the contract (unset fields filled). Raises ContractError; -> notes."""
  notes: list[str] = []
  check_buckets(config.model, manifest, where)
  contract = manifest.get("contract")
  if contract is None:
    notes.append(f"WARNING: {where} has no latent contract (written before it existed): the "
                 "encoders cannot be checked")
    return notes
  if int(contract.get("version", 0)) > CONTRACT_VERSION:
    raise ContractError(f"{where}: latent contract version {contract['version']} is newer "
                        f"than this reader's {CONTRACT_VERSION}")
  notes += resolve_vae(config.vae, contract["vae"], where, check_files)
  notes += resolve_text(config.text, contract["text"], where, check_files)
  if int(config.model.latent_channels) != int(config.vae.latent_channels):
    raise ContractError(f"model.latent_channels: the config says {config.model.latent_channels}"
                        f" but the VAE that made {where} has {config.vae.latent_channels} "
                        f"channels; set --config.model.latent_channels="
                        f"{config.vae.latent_channels}")
  return notes


def run_contract(manifest: Mapping[str, Any], data_path: str) -> dict[str, Any]:
  """The copy a run keeps: the contract, the buckets (with micro stats) and where they came from."""
  return {"data_path": os.path.abspath(data_path), "contract": manifest.get("contract"),
          "buckets": manifest["buckets"], "captions": manifest.get("captions", {}),
          "num_records": manifest["num_records"]}


def save_run_contract(workdir: str, record: Mapping[str, Any]) -> str:
  """Writes WORKDIR/contract.json atomically; returns its path."""
  path = os.path.join(workdir, RUN_CONTRACT_FILE)
  writer_lib.atomic_write_text(path, json.dumps(record, indent=1, sort_keys=True))
  return path


def load_run_contract(workdir: str) -> dict[str, Any] | None:
  """WORKDIR/contract.json, or None for a run that predates it."""
  path = os.path.join(workdir, RUN_CONTRACT_FILE)
  if not os.path.exists(path):
    return None
  with open(path) as f:
    return json.load(f)

