"""STIV model: shapes, frame replacement, MaskDiT, temporal attention, remat, config errors."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from stiv_jax import config_schema as schema
from stiv_jax.models import embeddings, masking
from stiv_jax.models.config import validate_model_config
from stiv_jax.models.stiv import STIV

B, T, H, W, C, L, DT = 2, 4, 8, 8, 4, 5, 16


def small_cfg(**kw):
  base = dict(latent_height=H, latent_width=W, num_frames=T, text_dim=DT, latent_channels=C,
              remat="none")
  base.update(kw)
  return schema.model_config("small", **base)


def randomize(model: STIV, seed: int = 0) -> STIV:
  """Random values in every parameter (the final layer is zero-initialised, which hides
  dependence of the output on the input)."""
  state = nnx.state(model, nnx.Param)
  leaves, treedef = jax.tree.flatten(state)
  keys = jax.random.split(jax.random.key(seed), len(leaves))
  leaves = [0.2 * jax.random.normal(k, x.shape, x.dtype) + (1.0 if x.ndim == 1 else 0.0)
            for k, x in zip(keys, leaves)]
  nnx.update(model, jax.tree.unflatten(treedef, leaves))
  return model


def inputs(seed=0, frames=T):
  ks = jax.random.split(jax.random.key(seed), 4)
  x = jax.random.normal(ks[0], (B, frames, H, W, C))
  t = jnp.array([0.3, 0.8])
  text = jax.random.normal(ks[1], (B, L, DT))
  text_mask = jnp.array([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], bool)
  pooled = jax.random.normal(ks[2], (B, DT))
  micro = jnp.array([[256, 256, 0, 0, 3, 20], [512, 384, 8, 4, 2, 40]], jnp.float32)
  return x, t, text, text_mask, pooled, micro


@pytest.fixture(scope="module")
def model():
  return randomize(STIV(small_cfg(mask_ratio=0.5), rngs=nnx.Rngs(0)))


@pytest.fixture(scope="module")
def fwd(model):
  graphdef, state = nnx.split(model)

  @jax.jit
  def f(state, x, t, text, text_mask, pooled, micro, cond_mask=None, cond_latents=None,
        mask_key=None):
    return nnx.merge(graphdef, state)(x, t, text, text_mask, pooled, micro, cond_mask=cond_mask,
                                      cond_latents=cond_latents, mask_key=mask_key)

  return lambda *a, **k: f(state, *a, **k)


def test_video_and_image_shapes(fwd):
  out = fwd(*inputs())
  assert out.velocity.shape == (B, T, H, W, C) and out.velocity.dtype == jnp.float32
  assert out.keep.shape == (B, (H // 2) * (W // 2)) and bool(out.keep.all())
  img = fwd(*inputs(frames=1))  # T2I: one frame through the video model
  assert img.velocity.shape == (B, 1, H, W, C)
  assert np.isfinite(np.asarray(img.velocity)).all()


def test_masked_forward_keeps_fixed_fraction(fwd):
  out = fwd(*inputs(), mask_key=jax.random.key(3))
  num_spatial = (H // 2) * (W // 2)
  np.testing.assert_array_equal(out.keep.sum(-1), [num_spatial // 2] * B)
  assert not np.array_equal(out.keep[0], out.keep[1])  # per-sample positions
  assert np.isfinite(np.asarray(out.velocity)).all()
  w = masking.keep_to_latent_mask(out.keep, small_cfg(), T, H, W)
  assert w.shape == (B, T, H, W) and float(w.mean()) == pytest.approx(0.5)
  # Tube masking: the same positions in every frame.
  np.testing.assert_array_equal(w[:, 0], w[:, -1])


def test_mask_ratio_zero_is_exactly_unmasked():
  m0 = randomize(STIV(small_cfg(mask_ratio=0.0), rngs=nnx.Rngs(0)))
  m5 = randomize(STIV(small_cfg(mask_ratio=0.5), rngs=nnx.Rngs(0)))
  a = m0(*inputs(), mask_key=jax.random.key(1))
  b = m5(*inputs())
  np.testing.assert_array_equal(a.velocity, b.velocity)
  assert bool(a.keep.all())


def test_kept_tokens_carry_their_grid_positions():
  wp, num_spatial, num_keep = 4, 16, 8
  idx = masking.sample_keep_indices(jax.random.key(0), 3, num_spatial, num_keep)
  assert idx.shape == (3, num_keep)
  assert all(len(set(np.asarray(r))) == num_keep for r in idx)
  rows, cols = masking.grid_positions(idx, wp)
  np.testing.assert_array_equal(rows * wp + cols, idx)
  # Gathered tokens are exactly the tokens at those grid places, in every frame.
  x = jax.random.normal(jax.random.key(1), (3, 2, num_spatial, 5))
  kept = masking.gather_tokens(x, idx)
  for b in range(3):
    np.testing.assert_array_equal(kept[b, 1], x[b, 1, idx[b]])
  # Restoring puts them back and the mask token everywhere else.
  token = jnp.full((5,), -7.0)
  full = masking.restore_tokens(kept, idx, num_spatial, token)
  keep = masking.keep_mask_from_indices(idx, num_spatial)
  np.testing.assert_array_equal(np.where(keep[:, None, :, None], x, -7.0), full)


def test_replaced_frames_hold_clean_latents(fwd):
  x, *rest = inputs()
  clean = jax.random.normal(jax.random.key(9), x.shape)
  cond_mask = jnp.array([[True, True, False, False]] * B)
  out1 = fwd(x, *rest, cond_mask=cond_mask, cond_latents=clean)
  # Changing the noisy input on replaced frames changes nothing: those frames are clean latents.
  x2 = x.at[:, :2].set(123.0)
  out2 = fwd(x2, *rest, cond_mask=cond_mask, cond_latents=clean)
  np.testing.assert_allclose(out1.velocity, out2.velocity, atol=1e-5)
  # Feeding the clean latents directly as input is the same as replacing them.
  x3 = x.at[:, :2].set(clean[:, :2])
  np.testing.assert_allclose(out1.velocity, fwd(x3, *rest).velocity, atol=1e-5)
  # And the condition latents do matter.
  out4 = fwd(x, *rest, cond_mask=cond_mask, cond_latents=clean * 2)
  assert not np.allclose(out1.velocity, out4.velocity, atol=1e-3)


def test_temporal_attention_is_not_causal(fwd):
  x, *rest = inputs()
  base = fwd(x, *rest).velocity
  later = fwd(x.at[:, 2:].add(1.0), *rest).velocity  # change only the later frames
  assert float(jnp.abs(base[:, :2] - later[:, :2]).max()) > 1e-3


def test_text_padding_is_masked(fwd):
  x, t, text, text_mask, pooled, micro = inputs()
  base = fwd(x, t, text, text_mask, pooled, micro).velocity
  # Sample 0 has 3 real tokens: changing its padded tokens changes nothing.
  padded = text.at[0, 3:].set(50.0)
  np.testing.assert_allclose(base[0], fwd(x, t, padded, text_mask, pooled, micro).velocity[0],
                             atol=1e-5)
  real = text.at[0, 0].set(5.0)
  assert not np.allclose(base[0], fwd(x, t, real, text_mask, pooled, micro).velocity[0],
                         atol=1e-3)


def test_micro_conditions_and_time_matter(fwd):
  x, t, text, text_mask, pooled, micro = inputs()
  base = fwd(x, t, text, text_mask, pooled, micro).velocity
  assert not np.allclose(base, fwd(x, t, text, text_mask, pooled, micro.at[:, 4].set(1.0)).velocity)
  assert not np.allclose(base, fwd(x, t * 0.5, text, text_mask, pooled, micro).velocity)


@pytest.fixture(scope="module")
def remat_setup():
  """A tinier model for gradient comparisons (one compile per policy)."""
  kw = dict(depth=1, mask_decoder_depth=1, latent_height=4, latent_width=4, num_frames=2)
  state = nnx.state(randomize(STIV(small_cfg(**kw), rngs=nnx.Rngs(0))))
  ks = jax.random.split(jax.random.key(0), 3)
  args = (jax.random.normal(ks[0], (B, 2, 4, 4, C)), jnp.array([0.3, 0.8]),
          jax.random.normal(ks[1], (B, L, DT)), jnp.ones((B, L), bool),
          jax.random.normal(ks[2], (B, DT)), jnp.ones((B, 6)))

  def grads(remat, scan=True):
    graphdef = nnx.graphdef(nnx.eval_shape(
        lambda: STIV(small_cfg(remat=remat, scan_blocks=scan, **kw), rngs=nnx.Rngs(0))))

    def loss(state):
      out = nnx.merge(graphdef, state)(*args, mask_key=jax.random.key(5))
      return jnp.mean(out.velocity ** 2)

    return jax.jit(jax.grad(loss))(state)

  return grads, grads("none")


@pytest.mark.parametrize("policy", ["full", "save_self_attn", "save_dots_no_batch"])
def test_remat_policies_give_same_gradients(remat_setup, policy):
  grads, ref = remat_setup
  got = grads(policy)
  for a, b in zip(jax.tree.leaves(ref), jax.tree.leaves(got)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
  assert any(float(jnp.abs(g).max()) > 0 for g in jax.tree.leaves(got))


def test_unrolled_blocks_match_scan(remat_setup):
  grads, ref = remat_setup
  for a, b in zip(jax.tree.leaves(ref), jax.tree.leaves(grads("none", scan=False))):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


def test_bfloat16_compute_runs_close_to_float32():
  m32 = randomize(STIV(small_cfg(), rngs=nnx.Rngs(0)))
  m16 = randomize(STIV(small_cfg(dtype="bfloat16"), rngs=nnx.Rngs(0)))
  a, b = m32(*inputs()).velocity, m16(*inputs()).velocity
  assert b.dtype == jnp.float32
  assert float(jnp.abs(a - b).mean()) < 0.1 * float(jnp.abs(a).mean())


def test_every_parameter_has_logical_axes():
  m = STIV(small_cfg(), rngs=nnx.Rngs(0))
  for path, var in nnx.to_flat_state(nnx.state(m, nnx.Param)):
    names = var.get_metadata().get("out_sharding")
    assert names is not None and len(names) == var.ndim, (path, names, var.shape)
    if path[0] in ("blocks", "decoder"):
      assert names[0] == "layers", path


def test_inflated_kernel_embeds_static_video_like_image():
  img_cfg = small_cfg(patch_t=1, num_frames=1, temporal_attention=False)
  vid_cfg = small_cfg()
  img = embeddings.PatchEmbed(img_cfg, rngs=nnx.Rngs(0))
  vid = embeddings.PatchEmbed(vid_cfg, rngs=nnx.Rngs(1))
  vid.kernel[...] = embeddings.inflate_patch_kernel(img.kernel[...], 2, "mean")
  vid.bias[...] = img.bias[...]
  frame = jax.random.normal(jax.random.key(0), (1, 1, H, W, C))
  static = jnp.repeat(frame, 2, axis=1)
  np.testing.assert_allclose(vid(static), img(frame), atol=1e-5)
  centre = embeddings.inflate_patch_kernel(img.kernel[...], 2, "center")
  assert float(jnp.abs(centre[0]).max()) == 0.0
  np.testing.assert_array_equal(centre[1], img.kernel[...][0])


def test_patchify_roundtrip():
  x = jax.random.normal(jax.random.key(0), (2, 4, 8, 6, 3))
  p = embeddings.patchify(x, 2, 2)
  assert p.shape == (2, 2, 12, 24)
  np.testing.assert_array_equal(embeddings.unpatchify(p, 2, 2, 4, 3, 3), x)


def test_per_block_adaln_has_its_own_modulation_per_block():
  """model.adaln='per_block': no shared projection, each block a SiLU + Linear of the condition
  vector (DiT), no table; the output depends on each block's own projection."""
  shared = STIV(small_cfg(), rngs=nnx.Rngs(0))
  per = randomize(STIV(small_cfg(adaln="per_block"), rngs=nnx.Rngs(0)))
  d, depth = shared.cfg.hidden, shared.cfg.depth
  assert shared.adaln is not None and per.adaln is None
  assert per.blocks.adaln.kernel.shape == (depth, d, 6, d)
  assert per.blocks.adaln.kernel.get_metadata()["out_sharding"] == ("layers", "embed", None,
                                                                     "adaln")
  assert not hasattr(per.blocks, "table") and hasattr(shared.blocks, "table")
  n = lambda m: sum(x.size for x in jax.tree.leaves(nnx.state(m, nnx.Param)))  # noqa: E731
  blocks = depth + shared.cfg.mask_decoder_depth
  assert n(per) - n(shared) == (blocks - 1) * (d * 6 * d + 6 * d) - blocks * 6 * d
  x, t, text, text_mask, pooled, micro = inputs()
  base = per(x, t, text, text_mask, pooled, micro).velocity
  assert np.isfinite(np.asarray(base)).all()
  per.blocks.adaln.kernel[...] = per.blocks.adaln.kernel[...].at[1].multiply(3.0)
  assert not np.allclose(base, per(x, t, text, text_mask, pooled, micro).velocity, atol=1e-4)


def test_sincos_positions_are_absolute_and_add_no_parameters():
  """model.abs_pos_embed='sincos': every (frame, row, col) gets its own fixed vector, the
  parameter tree is unchanged, and the output now depends on where a token is."""
  table = np.asarray(embeddings.sincos_positions(2, 3, 4, 64))
  assert table.shape == (2, 12, 64)
  flat = table.reshape(24, 64)
  dist = np.linalg.norm(flat[:, None] - flat[None], axis=-1)
  assert dist[~np.eye(24, dtype=bool)].min() > 0.1          # no two positions alike
  np.testing.assert_allclose(table[0, :, 16:], table[1, :, 16:])   # spatial part per frame
  np.testing.assert_allclose(table[:, 0, :16], table[:, 5, :16])   # frame part per position
  plain = randomize(STIV(small_cfg(), rngs=nnx.Rngs(0)))
  pos = STIV(small_cfg(abs_pos_embed="sincos"), rngs=nnx.Rngs(0))
  nnx.update(pos, nnx.state(plain, nnx.Param))  # same tree: the table is not a parameter
  x, t, text, text_mask, pooled, micro = inputs()
  assert not np.allclose(plain(x, t, text, text_mask, pooled, micro).velocity,
                         pos(x, t, text, text_mask, pooled, micro).velocity, atol=1e-4)


@pytest.mark.parametrize("field,value,match", [
    ("abs_pos_embed", "learned", r"model.abs_pos_embed: unknown 'learned'"),
    ("adaln", "single", r"model.adaln: unknown 'single'; expected one of \('shared', "
                        r"'per_block'\)"),
    ("attention_impl", "flash", r"model.attention_impl: unknown 'flash'; expected one of "
                                r"\('xla', 'cudnn', 'splash', 'auto'\)"),
    ("heads", 3, "hidden=64 is not divisible by heads=3"),
    ("num_frames", 5, "num_frames=5 is not divisible by patch_t=2"),
    ("latent_height", 9, "latent_height=9 is not divisible by patch_s=2"),
    ("mask_ratio", 1.0, r"mask_ratio: must be in \[0, 1\), got 1.0"),
    ("mask_ratio", -0.1, "mask_ratio"),
    ("remat", "some", "unknown policy 'some'"),
])
def test_bad_config_fails_at_build_naming_field(field, value, match):
  cfg = small_cfg(**{field: value})
  with pytest.raises(ValueError, match=match):
    validate_model_config(cfg)
  with pytest.raises(ValueError, match=match):
    STIV(cfg, rngs=nnx.Rngs(0))
