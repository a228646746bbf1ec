"""`stiv-bench encoders`: JAX VAE encode/decode and text encoding vs same-run PyTorch references.

Builds mid-size random-weight reference models (diffusers AutoencoderKL, transformers
CLIPTextModel and T5EncoderModel), saves them with save_pretrained, imports them into JAX
through the project's loaders, and times both on this CPU with the same inputs. Prints one JSON
object on the last line: frames/s and captions/s per side, `ratio` = the smallest JAX/PyTorch
speed ratio (`ratio_of` names the encoder), and the achieved FLOP/s (XLA cost analysis) next
to a same-run f32 matmul rate.
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np


def best_time(fn: Callable[[], object], repeats: int) -> float:
  """Best wall time of `repeats` calls after one warm-up call (compiles, caches)."""
  fn()
  times = []
  for _ in range(repeats):
    t = time.perf_counter()
    fn()
    times.append(time.perf_counter() - t)
  return min(times)


def matmul_flops_per_s(n: int = 2048, repeats: int = 5) -> float:
  """Same-run f32 matmul rate (2 n^3 FLOPs per [n, n] @ [n, n])."""
  a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
  f = jax.jit(lambda x: x @ x)
  return 2 * n**3 / best_time(lambda: f(a).block_until_ready(), repeats)


def compiled_flops(jitted, *args) -> float:
  """FLOPs of one call per XLA's cost analysis (0 when unavailable)."""
  cost = jitted.lower(*args).compile().cost_analysis()
  if isinstance(cost, (list, tuple)):
    cost = cost[0] if cost else {}
  return float((cost or {}).get("flops", 0.0))


def bench_vae(args, tmp: str, repeats: int) -> dict:
  """Frames/s of VAE encode (posterior mean) and decode, JAX vs diffusers."""
  import torch
  import diffusers
  from stiv_jax.models.encoders import vae as vae_lib

  blocks = tuple(int(c) for c in args.vae_blocks.split(","))
  torch.manual_seed(0)
  ref = diffusers.AutoencoderKL(
      block_out_channels=blocks, down_block_types=("DownEncoderBlock2D",) * len(blocks),
      up_block_types=("UpDecoderBlock2D",) * len(blocks), layers_per_block=args.vae_layers,
      latent_channels=args.vae_latent).eval()
  ref.save_pretrained(tmp + "/vae")
  vae = vae_lib.load_vae({"path": tmp + "/vae", "batch_size": args.vae_batch,
                          "dtype": args.dtype})
  n, s = args.vae_batch, args.vae_size
  frames = np.random.default_rng(0).uniform(-1, 1, (n, s, s, 3)).astype(np.float32)
  latents = vae.encode(frames)
  frames_t = torch.from_numpy(frames.transpose(0, 3, 1, 2).copy())
  latents_t = torch.from_numpy(latents.transpose(0, 3, 1, 2).copy() / vae.scaling_factor)

  def torch_enc():
    with torch.inference_mode():
      return ref.encode(frames_t).latent_dist.mean

  def torch_dec():
    with torch.inference_mode():
      return ref.decode(latents_t).sample

  out = {}
  for name, jax_fn, torch_fn, flops in (
      ("vae_encode", lambda: vae.encode(frames), torch_enc,
       compiled_flops(vae._encode_jit, vae._state, frames, jax.random.key(0))),
      ("vae_decode", lambda: vae.decode(latents), torch_dec,
       compiled_flops(vae._decode_jit, vae._state, latents))):
    tj, tt = best_time(jax_fn, repeats), best_time(torch_fn, repeats)
    out[name] = {"jax_frames_per_s": n / tj, "torch_frames_per_s": n / tt,
                 "ratio": tt / tj, "jax_flops_per_s": flops / tj, "gflops_per_frame": flops
                 / n / 1e9}
  out["vae_config"] = {"block_out_channels": blocks, "layers_per_block": args.vae_layers,
                       "latent_channels": args.vae_latent, "frame_size": s, "batch": n}
  return out


WORDS = ("a red blue green small large dog cat car bird person tree river mountain city "
         "runs sits jumps flies walks under over near the sunny rainy snowy night day "
         "slowly quickly camera pans zooms close wide shot of with and").split()


def _captions(tmp: str, vocab: int, n: int) -> tuple[list[str], str, int]:
  """`n` random captions, a SentencePiece model trained on a random corpus of the words, and
  its vocabulary size."""
  import sentencepiece as spm
  from stiv_jax.models.encoders import tokenizer as tok_lib
  rng = np.random.default_rng(0)
  corpus = [" ".join(rng.choice(WORDS, size=12)) for _ in range(2000)]
  with open(tmp + "/caps.txt", "w") as f:
    f.write("\n".join(corpus))
  model = tok_lib.train_tokenizer(tmp + "/caps.txt", tmp + "/tok", vocab, hard_vocab_limit=False)
  captions = [" ".join(rng.choice(WORDS, size=int(rng.integers(4, 30)))) for _ in range(n)]
  return captions, model, spm.SentencePieceProcessor(model_file=model).GetPieceSize()


def _time_text(enc, ref, captions: list[str], repeats: int, torch_out: Callable) -> dict:
  """Captions/s of `enc.encode_text` vs tokenizer + the torch module `ref`, and JAX FLOP/s."""
  import torch

  def torch_fn():  # Same tokenizer (part of both timings), then the reference tower.
    ids, mask = enc.tokenizer(captions)
    with torch.inference_mode():
      return torch_out(ref(input_ids=torch.from_numpy(ids).long(),
                           attention_mask=torch.from_numpy(mask).long()))

  ids, mask = enc.tokenizer(captions)
  flops = compiled_flops(enc._jit, enc._state, ids, mask)
  tj = best_time(lambda: enc.encode_text(captions), repeats)
  tt = best_time(torch_fn, repeats)
  n = len(captions)
  return {"jax_captions_per_s": n / tj, "torch_captions_per_s": n / tt, "ratio": tt / tj,
          "jax_flops_per_s": flops / tj}


def bench_text(args, tmp: str, repeats: int) -> dict:
  """Captions/s of the CLIP text encoder (paper pairing: SentencePiece ids into the CLIP
  tower), JAX vs transformers."""
  import torch
  import transformers
  from stiv_jax.models.encoders.base import build_text_encoder

  captions, tok_model, vocab = _captions(tmp, args.vocab, args.text_batch)
  torch.manual_seed(0)
  config = transformers.CLIPTextConfig(
      vocab_size=vocab, hidden_size=args.text_dim,
      intermediate_size=4 * args.text_dim, num_hidden_layers=args.text_layers,
      num_attention_heads=args.text_dim // 64, max_position_embeddings=args.text_len,
      eos_token_id=1, pad_token_id=0, bos_token_id=None)
  ref = transformers.CLIPTextModel(config).eval()
  ref.save_pretrained(tmp + "/clip")
  enc = build_text_encoder({"kind": "clip", "path": tmp + "/clip", "tokenizer": tok_model,
                            "dim": args.text_dim, "max_length": args.text_len,
                            "batch_size": args.text_batch, "dtype": args.dtype})
  return {"text": _time_text(enc, ref, captions, repeats, lambda o: o.pooler_output),
          "text_config": {"hidden": args.text_dim, "layers": args.text_layers,
                          "max_length": args.text_len, "vocab": vocab,
                          "batch": len(captions)}}


def bench_t5(args, tmp: str, repeats: int) -> dict:
  """Captions/s of the T5 v1.1 encoder (gated-GELU, relative position bias; its SentencePiece
  tokenizer), JAX vs transformers' T5EncoderModel."""
  import shutil

  import torch
  import transformers
  from stiv_jax.models.encoders.base import build_text_encoder

  captions, tok_model, vocab = _captions(tmp, args.vocab, args.text_batch)
  torch.manual_seed(0)
  config = transformers.T5Config(
      vocab_size=vocab, d_model=args.t5_dim, d_kv=64, d_ff=args.t5_ff,
      num_layers=args.t5_layers, num_heads=args.t5_dim // 64, feed_forward_proj="gated-gelu")
  ref = transformers.T5EncoderModel(config).eval()
  ref.save_pretrained(tmp + "/t5")
  shutil.copy(tok_model, tmp + "/t5/spiece.model")
  enc = build_text_encoder({"kind": "t5", "path": tmp + "/t5", "dim": args.t5_dim,
                            "max_length": args.t5_len, "batch_size": args.text_batch,
                            "dtype": args.dtype})
  return {"t5": _time_text(enc, ref, captions, repeats, lambda o: o.last_hidden_state),
          "t5_config": {"d_model": args.t5_dim, "d_ff": args.t5_ff, "layers": args.t5_layers,
                        "max_length": args.t5_len, "vocab": vocab, "batch": len(captions)}}


def main(argv: Sequence[str] | None = None) -> None:
  """Runs the benchmark and prints one JSON object on the last line."""
  p = argparse.ArgumentParser(prog="stiv-bench encoders", description=__doc__)
  p.add_argument("--vae-blocks", default="64,128,256,256")
  p.add_argument("--vae-layers", type=int, default=2)
  p.add_argument("--vae-latent", type=int, default=4)
  p.add_argument("--vae-size", type=int, default=128)
  p.add_argument("--vae-batch", type=int, default=4)
  p.add_argument("--text-dim", type=int, default=512)
  p.add_argument("--text-layers", type=int, default=8)
  p.add_argument("--text-len", type=int, default=77)
  p.add_argument("--text-batch", type=int, default=16)
  p.add_argument("--vocab", type=int, default=1000)
  p.add_argument("--t5-dim", type=int, default=512)
  p.add_argument("--t5-ff", type=int, default=1024)
  p.add_argument("--t5-layers", type=int, default=8)
  p.add_argument("--t5-len", type=int, default=128)
  p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
  p.add_argument("--repeats", type=int, default=3)
  args = p.parse_args(argv)
  import torch
  result = {"device": jax.devices()[0].device_kind, "torch_threads": torch.get_num_threads(),
            "dtype": args.dtype, "torch_dtype": "float32"}
  mm_before = matmul_flops_per_s()
  with tempfile.TemporaryDirectory() as tmp:
    result.update(bench_vae(args, tmp, args.repeats))
    result.update(bench_text(args, tmp, args.repeats))
    result.update(bench_t5(args, tmp, args.repeats))
  # The best of a rate taken before and after, so a busy moment does not deflate it.
  mm = max(mm_before, matmul_flops_per_s())
  result["matmul_flops_per_s"] = mm
  parts = ("vae_encode", "vae_decode", "text", "t5")
  for k in parts:
    result[k]["fraction_of_matmul_rate"] = result[k]["jax_flops_per_s"] / mm
  result["ratio_of"] = min(parts, key=lambda k: result[k]["ratio"])
  result["ratio"] = result[result["ratio_of"]]["ratio"]
  print(json.dumps(result))


if __name__ == "__main__":
  main()
