"""The splash-attention path (Pallas interpret mode on the CPU) equals the XLA path: outputs and
gradients of spatial (padded to 128-blocks), temporal (short sequences packed per kernel row) and
cross attention (key padding mask), alone and through the STIV model; bad masks are refused."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from stiv_jax import config_schema as schema
from stiv_jax.models import attention, splash
from stiv_jax.models.stiv import STIV

# (batch, query length, key length, heads, head dim, key padding mask)
CASES = {"spatial_padded": (2, 200, 200, 2, 32, False),
         "temporal_packed": (30, 10, 10, 2, 32, False),
         "cross_masked": (2, 40, 13, 2, 32, True)}


def _qkv(b, s, length, n, h, masked, seed=0):
  rng = np.random.default_rng(seed)
  q, k, v = (jnp.asarray(rng.standard_normal(shape), jnp.float32)
             for shape in ((b, s, n, h), (b, length, n, h), (b, length, n, h)))
  mask = None
  if masked:
    lengths = np.array([3, length][:b])
    mask = jnp.asarray(np.arange(length)[None] < lengths[:, None])[:, None, None, :]
  return q, k, v, mask


@pytest.mark.parametrize("name", list(CASES))
def test_splash_equals_xla_with_gradients(name):
  q, k, v, mask = _qkv(*CASES[name])
  w = jax.random.normal(jax.random.key(1), q.shape)

  def loss(impl):
    return lambda q, k, v: jnp.sum(attention.attend(q, k, v, mask, impl) * w)

  want, want_g = jax.jit(jax.value_and_grad(loss("xla"), argnums=(0, 1, 2)))(q, k, v)
  got, got_g = jax.jit(jax.value_and_grad(loss("splash"), argnums=(0, 1, 2)))(q, k, v)
  np.testing.assert_allclose(got, want, rtol=1e-4)
  for a, b in zip(want_g, got_g):
    np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-5)
  if mask is not None:  # padded keys get no gradient
    assert float(jnp.abs(got_g[1][0, 3:]).max()) == 0.0


def test_splash_refuses_a_general_mask():
  q, k, v, _ = _qkv(1, 8, 8, 2, 32, False)
  with pytest.raises(ValueError, match=r"key padding mask \[B, 1, 1, L\], got mask shape "
                                       r"\(1, 1, 8, 8\)"):
    attention.attend(q, k, v, jnp.ones((1, 1, 8, 8), bool), "splash")


def test_auto_is_splash_only_on_tpu():
  assert not splash.on_tpu()   # the CPU test backend: 'auto' is jax's own choice here


def test_model_with_splash_equals_xla():
  """Forward and parameter gradients of the masked model (spatial, packed temporal and masked
  cross-attention through the scanned, rematerialised blocks)."""
  kw = dict(depth=1, mask_decoder_depth=1, latent_height=4, latent_width=4, num_frames=4,
            text_dim=16, latent_channels=4, remat="save_self_attn")
  b, length = 2, 5
  ks = jax.random.split(jax.random.key(0), 3)
  args = (jax.random.normal(ks[0], (b, 4, 4, 4, 4)), jnp.array([0.3, 0.8]),
          jax.random.normal(ks[1], (b, length, 16)),
          jnp.array([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], bool),
          jax.random.normal(ks[2], (b, 16)), jnp.ones((b, 6)))
  model = STIV(schema.model_config("small", **kw), rngs=nnx.Rngs(0))
  state = nnx.state(model)
  state = jax.tree.map(lambda x: x + 0.1 * jax.random.normal(jax.random.key(2), x.shape), state)

  def run(impl):
    graphdef = nnx.graphdef(nnx.eval_shape(
        lambda: STIV(schema.model_config("small", attention_impl=impl, **kw), rngs=nnx.Rngs(0))))

    def loss(state):
      out = nnx.merge(graphdef, state)(*args, mask_key=jax.random.key(5))
      return jnp.mean(out.velocity ** 2)

    return jax.jit(jax.value_and_grad(loss))(state)

  (want, want_g), (got, got_g) = run("xla"), run("splash")
  np.testing.assert_allclose(got, want, rtol=1e-5)
  for a, g in zip(jax.tree.leaves(want_g), jax.tree.leaves(got_g)):
    np.testing.assert_allclose(g, a, rtol=2e-4, atol=1e-6)
