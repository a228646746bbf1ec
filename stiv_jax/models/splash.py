"""The TPU splash-attention kernel (jax.experimental.pallas.ops.tpu.splash_attention) behind
`attention.attend(implementation='splash')`, for STIV's three attentions.

The kernel works on 128-token blocks, so sequences are padded to a multiple of 128 and the
padding masked with segment ids (a key padding mask [B, L] becomes the keys' segment ids, too).
Short self-attention sequences, the temporal attention's Tp frames per spatial position, are
packed 128 // Tp to a kernel row with one segment id each instead of each being padded to 128
(at Tp = 10, 12 positions per row: ~13x the needed score FLOPs instead of ~160x).

Under a mesh (the logical rules and abstract mesh of stiv_jax/models/partitioning.py) the kernel
runs per device on its shards through `shard_map`: GSPMD cannot partition a Pallas call. Off TPU
(tests, CPU) it runs in Pallas interpret mode with the same numerics.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_kernel as sk
from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_mask as sm
from jax.sharding import PartitionSpec as P

from stiv_jax.models.partitioning import LogicalSpec, mesh_spec

BLOCK = 128        # the kernel's lane width: block sizes are multiples of it
MAX_BLOCK = 512    # largest block size tried


def on_tpu() -> bool:
  """Whether the code being traced targets a TPU (the abstract mesh's devices under a mesh, so
  an ahead-of-time TPU compile on a CPU host counts; else the default backend)."""
  mesh = jax.sharding.get_abstract_mesh()
  if not mesh.empty:
    return mesh.abstract_device.platform == "tpu"
  return jax.default_backend() == "tpu"


def _block(n: int) -> int:
  return next(b for b in (MAX_BLOCK, 256, BLOCK) if n % b == 0)


def _pad_to(x: jax.Array, axis: int, size: int, value=0) -> jax.Array:
  pad = [(0, 0)] * x.ndim
  pad[axis] = (0, size - x.shape[axis])
  return jnp.pad(x, pad, constant_values=value)


def _kernel(q: jax.Array, k: jax.Array, v: jax.Array, seg_q: jax.Array, seg_kv: jax.Array,
            interpret: bool) -> jax.Array:
  """q [B, S, N, H] (pre-scaled), k/v [B, L, N, H], segment ids [B, S] / [B, L] -> [B, S, N, H];
  a query attends to the keys of its segment. Pads both sequences to block multiples."""
  b, s, n, _ = q.shape
  length = k.shape[1]
  s_pad, l_pad = -(-s // BLOCK) * BLOCK, -(-length // BLOCK) * BLOCK
  # Padded queries and keys get segment -1: they only see each other (finite, then dropped).
  q, seg_q = _pad_to(q, 1, s_pad), _pad_to(seg_q, 1, s_pad, -1)
  k, v, seg_kv = _pad_to(k, 1, l_pad), _pad_to(v, 1, l_pad), _pad_to(seg_kv, 1, l_pad, -1)
  bq, bkv = _block(s_pad), _block(l_pad)
  sizes = sk.BlockSizes(block_q=bq, block_kv=bkv, block_kv_compute=bkv, block_q_dkv=bq,
                        block_kv_dkv=bkv, block_kv_dkv_compute=bkv, block_q_dq=bq,
                        block_kv_dq=bkv)
  mask = sm.MultiHeadMask([sm.FullMask((s_pad, l_pad)) for _ in range(n)])
  kernel = sk.make_splash_mha(mask, block_sizes=sizes, head_shards=1, q_seq_shards=1,
                              interpret=interpret)
  heads_major = lambda a: a.transpose(0, 2, 1, 3)  # noqa: E731  [B, N, S, H]
  out = jax.vmap(kernel)(heads_major(q), heads_major(k), heads_major(v),
                         segment_ids=sk.SegmentIds(q=seg_q, kv=seg_kv))
  return heads_major(out)[:, :s]


def _local(q: jax.Array, k: jax.Array, v: jax.Array, key_mask: jax.Array | None,
           interpret: bool) -> jax.Array:
  """Splash attention of one device's shards (see `attention`)."""
  b, s, n, h = q.shape
  length = k.shape[1]
  q = (q.astype(jnp.float32) * h ** -0.5).astype(q.dtype)   # the kernel does not scale
  group = BLOCK // s if key_mask is None and s == length and s < BLOCK else 1
  if group > 1:  # pack `group` short sequences per kernel row, one segment each
    rows = -(-b // group)
    pack = lambda a: _pad_to(a, 0, rows * group).reshape(rows, group * s, n, h)  # noqa: E731
    seg = jnp.broadcast_to(jnp.repeat(jnp.arange(group, dtype=jnp.int32), s), (rows, group * s))
    out = _kernel(pack(q), pack(k), pack(v), seg, seg, interpret)
    return out.reshape(rows * group, s, n, h)[:b]
  seg_q = jnp.ones((b, s), jnp.int32)
  seg_kv = (jnp.ones((b, length), jnp.int32) if key_mask is None
            else key_mask.astype(jnp.int32))   # masked keys: segment 0, no query's
  return _kernel(q, k, v, seg_q, seg_kv, interpret)


def attention(q: jax.Array, k: jax.Array, v: jax.Array, key_mask: jax.Array | None = None,
              q_axes: LogicalSpec | None = None, kv_axes: LogicalSpec | None = None
              ) -> jax.Array:
  """Splash attention: q [B, S, N, H], k/v [B, L, N, H], key_mask [B, L] bool (True = attend)
  or None -> [B, S, N, H], scaled by 1/sqrt(H) like jax.nn.dot_product_attention. Under active
  logical rules and a mesh, it runs per device on the shards q_axes / kv_axes name."""
  fn = functools.partial(_local, interpret=not on_tpu())
  q_spec = mesh_spec(q.shape, q_axes) if q_axes is not None else None
  if q_spec is None:
    return fn(q, k, v, key_mask)
  kv_spec = mesh_spec(k.shape, kv_axes if kv_axes is not None else q_axes)
  if key_mask is None:
    return jax.shard_map(lambda q, k, v: fn(q, k, v, None), in_specs=(q_spec, kv_spec, kv_spec),
                         out_specs=q_spec, check_vma=False)(q, k, v)
  mask_spec = P(kv_spec[0], None)
  return jax.shard_map(fn, in_specs=(q_spec, kv_spec, kv_spec, mask_spec), out_specs=q_spec,
                       check_vma=False)(q, k, v, key_mask)
