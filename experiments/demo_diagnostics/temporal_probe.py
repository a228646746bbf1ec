"""How much does a trained model's x1 prediction at token frame j depend on the input at token
frame 0? New noise in frame 0 only; rms change of the prediction per token frame, at 3 t.

python experiments/demo_diagnostics/temporal_probe.py WORKDIR SHARDS_DIR
"""
import sys, json
import numpy as np, jax, jax.numpy as jnp
from flax import nnx
from stiv_jax.train import checkpoint as ckpt_lib
from stiv_jax import sharding as shd
from stiv_jax.data import reader
path = sys.argv[1]
cfg = ckpt_lib.load_config(ckpt_lib.resolve_checkpoint(path)[0])
mesh = shd.make_mesh(cfg.mesh); rules = shd.rules_from_config(cfg.mesh.rules)
r = ckpt_lib.restore_ema(path, mesh, rules); model = r.model()
ds = reader.open_dataset(sys.argv[2])
recs = [ds.decode(i) for i in range(8)]
x1 = jnp.asarray(np.stack([r.latents for r in recs]).astype(np.float32))
text = jnp.asarray(np.stack([r.text for r in recs]).astype(np.float32))
tm = jnp.asarray(np.stack([r.text_mask for r in recs]).astype(bool))
pooled = jnp.asarray(np.stack([r.pooled for r in recs]).astype(np.float32))
micro = jnp.asarray(np.stack([r.micro_list() for r in recs]).astype(np.float32))
pt = cfg.model.patch_t
def x1hat(m, xt, t):
  v = m(xt, t, text, tm, pooled, micro).velocity
  return xt + (1 - t)[:, None, None, None, None] * v
key = jax.random.PRNGKey(0)
eps = jax.random.normal(key, x1.shape)
eps2 = jax.random.normal(jax.random.PRNGKey(1), x1.shape)
for tval in (0.05, 0.3, 0.6):
  t = jnp.full((8,), tval)
  xt = t[:, None, None, None, None] * x1 + (1 - t[:, None, None, None, None]) * eps
  xt2 = xt.at[:, :pt].set((t[:, None, None, None, None] * x1 + (1 - t[:, None, None, None, None]) * eps2)[:, :pt])
  a, b = x1hat(model, xt, t), x1hat(model, xt2, t)
  d = np.asarray(jnp.sqrt(jnp.mean((a - b) ** 2, axis=(0, 2, 3, 4)))).reshape(-1, pt).mean(1)
  err = np.asarray(jnp.sqrt(jnp.mean((a - x1) ** 2, axis=(0, 2, 3, 4)))).reshape(-1, pt).mean(1)
  print(json.dumps({"t": tval, "change_per_token_frame_when_frame0_noise_changes": np.round(d, 4).tolist(),
                    "x1_err_per_token_frame": np.round(err, 4).tolist()}), flush=True)
