"""Flow samplers (Euler, Heun, Euler-Maruyama) with JIT-CFG and frame replacement.

Time runs from t = 0 (noise) to t = 1 (data), as in training (STIV_SPEC.md sections 2-3).
The math lives in pure functions over a velocity function; `Sampler` is the thin jitted
wrapper around an STIV model (EMA parameters, batch sharded over a mesh, no token masking).
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec as P

Array = jax.Array
VelocityFn = Callable[[Array, Array], Array]  # (x [B, ...], t [B]) -> v [B, ...]
# (params, x, t, cond) -> velocity; cond is a dict of the model's conditioning arrays.
ApplyFn = Callable[[Any, Array, Array, Mapping[str, Array]], Array]

SOLVERS = ("euler", "heun", "sde")
SCHEDULES = ("uniform", "shifted")
GUIDANCE_MODES = ("jit", "sit", "none")
UNCOND_IMAGE = ("renoise", "clean")
COND_KEYS = ("text", "text_mask", "pooled", "micro", "cond_mask", "cond_latents")


@dataclasses.dataclass(frozen=True)
class SamplerConfig:
  """Every sampling choice; `from_config` reads an ml_collections `sampling` section."""

  solver: str = "euler"          # euler (default) | heun | sde (Euler-Maruyama)
  steps: int = 50
  schedule: str = "uniform"      # uniform | shifted (SD3-style shift of the noise level)
  shift: float = 3.0             # used by the shifted schedule; > 1 spends more steps near noise
  sde_noise: float = 1.0         # eta: diffusion g(t)^2 = 2 * eta * (1 - t) for the SDE solver
  guidance_mode: str = "jit"     # jit (one scale, two branches) | sit (two scales) | none
  guidance: float = 7.5          # JIT-CFG scale s (paper: 7.5)
  text_guidance: float = 7.5     # SIT-CFG: scale of the text term
  image_guidance: float = 1.5    # SIT-CFG: scale of the image term
  renorm: bool = True            # CFG renormalisation to the conditional branch's per-sample norm
  batched_cfg: bool = True       # True: ONE forward over [cond; uncond]; False: separate forwards
  # What the image-free branch sees on conditioning frames: 'renoise' puts them on the
  # forward noising path t * clean + (1 - t) * eps0 (as an image-dropped training sample
  # sees them: not replaced, noisy); 'clean' leaves the clean latent without replacement.
  uncond_image: str = "renoise"

  def __post_init__(self):
    for field, allowed in (("solver", SOLVERS), ("schedule", SCHEDULES),
                           ("guidance_mode", GUIDANCE_MODES), ("uncond_image", UNCOND_IMAGE)):
      if getattr(self, field) not in allowed:
        raise ValueError(f"sampling.{field}: unknown value {getattr(self, field)!r}; "
                         f"expected one of {allowed}")
    if int(self.steps) < 1:
      raise ValueError(f"sampling.steps: must be >= 1, got {self.steps}")
    if self.schedule == "shifted" and self.shift <= 0:
      raise ValueError(f"sampling.shift: must be > 0, got {self.shift}")
    if self.sde_noise < 0:
      raise ValueError(f"sampling.sde_noise: must be >= 0, got {self.sde_noise}")

  @classmethod
  def from_config(cls, section: Mapping[str, Any] | None = None, **overrides) -> "SamplerConfig":
    """Builds from a config section (unknown fields are an error) plus keyword overrides."""
    values = dict(section or {})
    values.update({k: v for k, v in overrides.items() if v is not None})
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - names)
    if unknown:
      raise ValueError(f"sampling: unknown fields {unknown}; expected some of {sorted(names)}")
    return cls(**values)


# ----------------------------------------------------------------------------- time grids


def time_grid(steps: int, schedule: str = "uniform", shift: float = 3.0) -> np.ndarray:
  """Increasing times t_0 = 0 (noise) ... t_steps = 1 (data) for the solver."""
  u = np.linspace(0.0, 1.0, int(steps) + 1, dtype=np.float64)
  if schedule == "uniform":
    return u.astype(np.float32)
  if schedule == "shifted":
    sigma = 1.0 - u  # noise level
    sigma = shift * sigma / (1.0 + (shift - 1.0) * sigma)
    return (1.0 - sigma).astype(np.float32)
  raise ValueError(f"sampling.schedule: unknown value {schedule!r}; expected one of {SCHEDULES}")


# ----------------------------------------------------------------------------- solver steps


def _bt(t: Array, x: Array) -> Array:
  """Broadcasts per-sample times [B] against x [B, ...]."""
  return jnp.reshape(t, t.shape + (1,) * (x.ndim - t.ndim))


def euler_step(vf: VelocityFn, x: Array, t: Array, t_next: Array) -> Array:
  """One explicit Euler step of dx/dt = v(x, t)."""
  return x + _bt(t_next - t, x) * vf(x, t)


def heun_step(vf: VelocityFn, x: Array, t: Array, t_next: Array) -> Array:
  """One Heun (explicit trapezoid) step: Euler predictor, averaged-slope corrector."""
  dt = _bt(t_next - t, x)
  v1 = vf(x, t)
  v2 = vf(x + dt * v1, t_next)
  return x + dt * 0.5 * (v1 + v2)


def sde_step(vf: VelocityFn, x: Array, t: Array, t_next: Array, key: Array,
             eta: float, last: bool | Array = False) -> Array:
  """One Euler-Maruyama step of the marginal-preserving flow SDE.

  With eps_hat = x - t * v (the model's noise estimate) the score is -eps_hat / (1 - t); a
  diffusion g^2 = 2 * eta * (1 - t) gives dx = (v - eta * eps_hat) dt + g dW. The last step
  (into t = 1) is taken without noise.
  """
  dt = _bt(t_next - t, x)
  tb = _bt(t, x)
  v = vf(x, t)
  eps_hat = x - tb * v
  drift = v - eta * eps_hat
  std = jnp.sqrt(jnp.maximum(2.0 * eta * (1.0 - tb) * dt, 0.0))
  noise = jax.random.normal(key, x.shape, x.dtype)
  noisy = x + dt * drift + std * noise
  deterministic = x + dt * v
  return jnp.where(last, deterministic, noisy)


def solve(vf: VelocityFn, x0: Array, times: Sequence[float], solver: str = "euler",
          key: Array | None = None, eta: float = 1.0,
          project: Callable[[Array, Array], Array] | None = None) -> Array:
  """Integrates from times[0] to times[-1] (pure; for analytic fields and tests).

  `project(x, t)` is applied after every step (frame replacement); identity if None.
  """
  project = project or (lambda x, t: x)
  b = x0.shape[0]
  x = project(x0, jnp.full((b,), times[0], jnp.float32))
  for i in range(len(times) - 1):
    t = jnp.full((b,), times[i], jnp.float32)
    tn = jnp.full((b,), times[i + 1], jnp.float32)
    wrapped = lambda y, s: vf(project(y, s), s)
    if solver == "euler":
      x = euler_step(wrapped, x, t, tn)
    elif solver == "heun":
      x = heun_step(wrapped, x, t, tn)
    elif solver == "sde":
      if key is None:
        raise ValueError("solve: the sde solver needs a PRNG key")
      x = sde_step(wrapped, x, t, tn, jax.random.fold_in(key, i), eta, i == len(times) - 2)
    else:
      raise ValueError(f"sampling.solver: unknown value {solver!r}; expected one of {SOLVERS}")
    x = project(x, tn)
  return x


# ----------------------------------------------------------------------------- guidance


def _per_sample_norm(v: Array, weight: Array | None) -> Array:
  """L2 norm per sample over all non-batch axes, counting only positions with weight 1."""
  sq = jnp.square(v.astype(jnp.float32))
  if weight is not None:
    sq = sq * weight
  return jnp.sqrt(jnp.sum(sq, axis=tuple(range(1, v.ndim))))


def renormalize(v: Array, v_cond: Array, weight: Array | None = None, eps: float = 1e-8) -> Array:
  """CFG renormalisation: F <- F * ||F_cond|| / ||F||, norms per sample (STIV_SPEC section 3)."""
  ratio = _per_sample_norm(v_cond, weight) / (_per_sample_norm(v, weight) + eps)
  return v * _bt(ratio, v).astype(v.dtype)


def cfg_combine(v_cond: Array, v_uncond: Array, scale: float, renorm: bool = True,
                weight: Array | None = None) -> Array:
  """JIT-CFG: F = F_uncond + s * (F_cond - F_uncond), optionally renormalised."""
  v = v_uncond + scale * (v_cond - v_uncond)
  return renormalize(v, v_cond, weight) if renorm else v


def sit_cfg_combine(v_full: Array, v_image: Array, v_none: Array, text_scale: float,
                    image_scale: float, renorm: bool = True,
                    weight: Array | None = None) -> Array:
  """SIT-CFG (three branches): F = F(0,0) + s_I (F(0,I) - F(0,0)) + s_T (F(T,I) - F(0,I))."""
  v = v_none + image_scale * (v_image - v_none) + text_scale * (v_full - v_image)
  return renormalize(v, v_full, weight) if renorm else v


def _frame_weight(cond_mask: Array, like: Array) -> Array:
  """[B, T] conditioning mask -> weight [B, T, 1, 1, 1] that is 1 on generated frames."""
  w = 1.0 - cond_mask.astype(jnp.float32)
  return jnp.reshape(w, w.shape + (1,) * (like.ndim - w.ndim))


def replace_frames(x: Array, cond_mask: Array, cond_latents: Array) -> Array:
  """Frame replacement: conditioning frames of x set to their clean latents."""
  m = jnp.reshape(cond_mask, cond_mask.shape + (1,) * (x.ndim - cond_mask.ndim))
  return jnp.where(m, cond_latents.astype(x.dtype), x)


def _branch(cond: Mapping[str, Array], null: Mapping[str, Array], text: bool,
            image: bool) -> dict[str, Array]:
  """Conditioning dict of one CFG branch: text from cond or null, image mask kept or cleared."""
  src = cond if text else null
  out = {k: src[k] for k in ("text", "text_mask", "pooled")}
  out["micro"] = cond["micro"]
  out["cond_latents"] = cond["cond_latents"]
  out["cond_mask"] = cond["cond_mask"] if image else jnp.zeros_like(cond["cond_mask"])
  return out


@dataclasses.dataclass(frozen=True)
class ActivationLayout:
  """The mesh and logical rules the model's activation constraints read while the step traces
  (batch over the sampler's batch axes, frames / positions over the context axis)."""

  mesh: jax.sharding.Mesh
  rules: tuple[tuple[str, tuple[str, ...]], ...]


def activation_layout(mesh: jax.sharding.Mesh, rules: Mapping[str, tuple[str, ...]],
                      batch_axes: Sequence[str]) -> ActivationLayout:
  """The sampler's activation layout: the train rules with 'batch' = the forward's batch axes."""
  act = dict(rules)
  act["batch"] = tuple(batch_axes)
  return ActivationLayout(mesh, tuple(sorted(act.items())))


@dataclasses.dataclass(frozen=True)
class BranchSharding:
  """Where a batched-CFG forward's inputs are (batch-sharded or replicated) and where its
  interleaved batch of branches runs (sharded over the batch axes)."""

  inputs: NamedSharding
  forward: NamedSharding


def num_branches(cfg: SamplerConfig) -> int:
  """Model evaluations per velocity: 1 (no guidance), 2 (JIT-CFG) or 3 (SIT-CFG)."""
  return {"none": 1, "jit": 2, "sit": 3}[cfg.guidance_mode]


def _interleave(parts: Sequence[Array]) -> Array:
  """[n x [B, ...]] -> [B * n, ...] with sample i's branches in rows i*n ... i*n + n-1, so a
  batch-sharded input gives a forward batch whose shards stay on the same devices."""
  stacked = jnp.stack(parts, axis=1)
  return jnp.reshape(stacked, (-1,) + stacked.shape[2:])


def guided_velocity(apply: ApplyFn, params: Any, x: Array, t: Array,
                    cond: Mapping[str, Array], null: Mapping[str, Array], eps0: Array,
                    cfg: SamplerConfig, sharding: BranchSharding | None = None) -> Array:
  """The guided velocity at (x, t): JIT-CFG, SIT-CFG or conditional only.

  `cond` holds the batch's text / text_mask / pooled / micro / cond_mask / cond_latents;
  `null` holds the empty prompt's text / text_mask / pooled broadcast to the batch.
  With `cfg.batched_cfg` all branches run as ONE forward over the interleaved batch; a
  `sharding` spreads that batch over the mesh, so even one sample's branches run on
  different devices (separate forwards of one sample cannot be split that way).
  """
  cmask = cond["cond_mask"]
  x_cond = replace_frames(x, cmask, cond["cond_latents"])
  if cfg.uncond_image == "renoise":
    tb = _bt(t, x)
    renoised = tb * cond["cond_latents"].astype(x.dtype) + (1.0 - tb) * eps0
    x_free = replace_frames(x, cmask, renoised)
  else:
    x_free = x_cond
  if cfg.guidance_mode == "none":
    branches = [(x_cond, _branch(cond, null, True, True))]
  elif cfg.guidance_mode == "jit":
    branches = [(x_cond, _branch(cond, null, True, True)),
                (x_free, _branch(cond, null, False, False))]
  else:  # sit
    branches = [(x_cond, _branch(cond, null, True, True)),
                (x_cond, _branch(cond, null, False, True)),
                (x_free, _branch(cond, null, False, False))]
  if cfg.batched_cfg and len(branches) > 1:
    n = len(branches)
    xs = _interleave([b[0] for b in branches])
    cs = {k: _interleave([b[1][k] for b in branches]) for k in COND_KEYS}
    ts = jnp.repeat(t, n, axis=0)
    if sharding is not None:
      # Pinned where the inputs are first, so the forward's shards are local slices (left
      # free, the partitioner reshards the inputs with all-to-alls).
      xs, ts, cs = jax.lax.with_sharding_constraint((xs, ts, cs), sharding.inputs)
      xs, ts, cs = jax.lax.with_sharding_constraint((xs, ts, cs), sharding.forward)
    v = apply(params, xs, ts, cs)
    v = jnp.reshape(v, (-1, n) + v.shape[1:])
    outs = [v[:, i] for i in range(n)]
  else:
    outs = [apply(params, bx, t, bc) for bx, bc in branches]
  weight = _frame_weight(cmask, x)
  if cfg.guidance_mode == "none":
    return outs[0]
  if cfg.guidance_mode == "jit":
    return cfg_combine(outs[0], outs[1], cfg.guidance, cfg.renorm, weight)
  return sit_cfg_combine(outs[0], outs[1], outs[2], cfg.text_guidance, cfg.image_guidance,
                         cfg.renorm, weight)


def sample_step(apply: ApplyFn, cfg: SamplerConfig, params: Any, x: Array, t: Array,
                t_next: Array, cond: Mapping[str, Array], null: Mapping[str, Array],
                eps0: Array, key: Array, last: Array,
                sharding: BranchSharding | None = None) -> Array:
  """One solver step of guided sampling; conditioning frames are reset before and after."""
  vf = lambda y, s: guided_velocity(apply, params, replace_frames(
      y, cond["cond_mask"], cond["cond_latents"]), s, cond, null, eps0, cfg, sharding)
  if cfg.solver == "euler":
    x = euler_step(vf, x, t, t_next)
  elif cfg.solver == "heun":
    x = heun_step(vf, x, t, t_next)
  else:
    x = sde_step(vf, x, t, t_next, key, cfg.sde_noise, last)
  return replace_frames(x, cond["cond_mask"], cond["cond_latents"])


def grid_step(apply: ApplyFn, cfg: SamplerConfig, params: Any, x: Array, i: Array,
              times: Array, cond: Mapping[str, Array], null: Mapping[str, Array], eps0: Array,
              sde_key: Array, sharding: BranchSharding | None = None) -> Array:
  """Step `i` of the time grid `times` [steps + 1]: the times, the SDE key and the last-step
  flag are derived on the device, so the sampling loop dispatches one call per step."""
  t = jnp.full((x.shape[0],), times[i], jnp.float32)
  t_next = jnp.full((x.shape[0],), times[i + 1], jnp.float32)
  last = i == times.shape[0] - 2
  return sample_step(apply, cfg, params, x, t, t_next, cond, null, eps0,
                     jax.random.fold_in(sde_key, i), last, sharding)


# ----------------------------------------------------------------------------- model wrapper


def model_apply_fn(graphdef: nnx.GraphDef) -> ApplyFn:
  """Pure (state, x, t, cond) -> velocity for an STIV graphdef; never masks tokens."""

  def apply(state, x, t, cond):
    model = nnx.merge(graphdef, state)
    out = model(x, t, cond["text"], cond["text_mask"], cond["pooled"], cond["micro"],
                cond_mask=cond["cond_mask"], cond_latents=cond["cond_latents"], mask_key=None)
    return out.velocity

  return apply


@functools.lru_cache(maxsize=16)
def _cached_step(graphdef: nnx.GraphDef, cfg: SamplerConfig,
                 sharding: BranchSharding | None, layout: ActivationLayout | None = None):
  """One jitted step per (model structure, sampler choices, branch sharding, layout): repeated
  samplers (CLI calls in one process, samples every N training steps) reuse its compilations."""
  return _new_step(model_apply_fn(graphdef), cfg, sharding, layout)


def _new_step(apply: ApplyFn, cfg: SamplerConfig, sharding: BranchSharding | None,
              layout: ActivationLayout | None = None):
  """The jitted `grid_step` (params, x, i, times, cond, null, eps0, sde_key) -> x. The new x
  keeps the inputs' sharding (left free, XLA may pick a tiling the mesh cannot name)."""
  from stiv_jax import sharding as shd
  step = functools.partial(grid_step, apply, cfg, sharding=sharding)
  if layout is not None:
    step = shd.under_rules(step, layout.mesh, dict(layout.rules))
  return jax.jit(step, out_shardings=None if sharding is None else sharding.inputs)


def jitted_step(graphdef: nnx.GraphDef, cfg: SamplerConfig,
                sharding: BranchSharding | None = None, layout: ActivationLayout | None = None):
  """The jitted grid step for a model graph, shared by samplers that differ only in their step
  count (each count compiles once: it is the shape of `times`)."""
  key_cfg = dataclasses.replace(cfg, steps=1)
  try:
    return _cached_step(graphdef, key_cfg, sharding, layout)
  except TypeError:  # an unhashable graph: compile for this sampler only
    return _new_step(model_apply_fn(graphdef), cfg, sharding, layout)


def initial_noise(seed: int, batch: int, shape: Sequence[int], offset: int = 0) -> Array:
  """Per-sample Gaussian noise: sample i uses fold_in(key(seed), offset + i), so a sample
  does not depend on the batch it is drawn in."""
  base = jax.random.key(int(seed))
  keys = [jax.random.fold_in(base, offset + i) for i in range(batch)]
  return jnp.stack([jax.random.normal(k, tuple(shape), jnp.float32) for k in keys])


def default_mesh() -> jax.sharding.Mesh:
  """A one-axis ('data',) mesh over every device, for sampling outside a training run."""
  n = jax.device_count()
  return jax.make_mesh((n,), ("data",), axis_types=(jax.sharding.AxisType.Auto,))


class Sampler:
  """Jitted guided sampler around an (EMA) STIV model, batch sharded over `mesh`."""

  def __init__(self, model: nnx.Module, cfg: SamplerConfig,
               mesh: jax.sharding.Mesh | None = None, batch_axes: Sequence[str] | None = None,
               apply: ApplyFn | None = None, rules: Mapping[str, tuple[str, ...]] | None = None,
               params: Any = None):
    """rules: logical -> mesh axes (stiv_jax.sharding) placing parameters that are not on
    `mesh` yet by their logical axes (fsdp / tensor); without, they are replicated. With
    rules the model's activations follow them too ('batch' = the sampler's batch axes; a
    'context' mesh axis splits each clip's frames / positions, stiv_jax/models/partitioning.py).
    params: a pytree used instead of the model's state (with `apply`, e.g. base weights plus
    unmerged LoRA adapters), placed the same way."""
    self.cfg = cfg
    self.mesh = mesh if mesh is not None else default_mesh()
    axes = tuple(batch_axes) if batch_axes is not None else tuple(
        a for a in self.mesh.axis_names if a in ("data", "fsdp")) or (self.mesh.axis_names[0],)
    self.batch_axes = axes
    self.batch_divisor = int(np.prod([self.mesh.shape[a] for a in axes]))
    graphdef, state = nnx.split(model)
    self.params = self._place_params(state if params is None else params, rules)
    self._batch_sharding = NamedSharding(self.mesh, P(axes))
    self._replicated = NamedSharding(self.mesh, P())
    # Model evaluations that share one forward; its batch is what must divide the mesh.
    self.forward_branches = num_branches(cfg) if cfg.batched_cfg else 1
    self.layout = activation_layout(self.mesh, rules, axes) if rules is not None else None
    self._graphdef, self._apply, self._steps = graphdef, apply, {}

  def step_for(self, sharded_inputs: bool):
    """The jitted grid step for batch-sharded (or replicated) inputs, built once each."""
    if sharded_inputs not in self._steps:
      sharding = None
      if self.forward_branches > 1:
        inputs = self._batch_sharding if sharded_inputs else self._replicated
        sharding = BranchSharding(inputs, self._batch_sharding)
      self._steps[sharded_inputs] = (
          jitted_step(self._graphdef, self.cfg, sharding, self.layout) if self._apply is None
          else _new_step(self._apply, self.cfg, sharding, self.layout))
    return self._steps[sharded_inputs]

  def _place_params(self, tree: Any, rules: Mapping[str, tuple[str, ...]] | None) -> Any:
    """Leaves already in a NamedSharding on this mesh stay where they are (a sharded restore);
    the others go to their logical-axis sharding under `rules`, or replicated without."""
    from stiv_jax import sharding as shd
    specs = (shd.param_specs(tree, self.mesh, rules)
             if rules is not None and isinstance(tree, nnx.State)
             else jax.tree.map(lambda _: P(), tree))

    def place(leaf, spec):
      sharding = getattr(leaf, "sharding", None)
      if isinstance(sharding, NamedSharding) and sharding.mesh == self.mesh:
        return leaf
      return jax.device_put(leaf, NamedSharding(self.mesh, spec))

    return jax.tree.map(place, tree, specs)

  def padding(self, batch: int) -> tuple[int, bool]:
    """(rows to add, whether inputs shard over the batch) for a call with `batch` samples.

    The padded batch times the branches per forward must divide the mesh; inputs whose own
    batch does not divide it are replicated and the forward batch alone is sharded (one
    sample's JIT-CFG branches on two devices instead of a padded copy of each)."""
    d, n = self.batch_divisor, self.forward_branches
    pad = next(p for p in range(d) if ((batch + p) * n) % d == 0)
    return pad, (batch + pad) % d == 0

  def __call__(self, cond: Mapping[str, np.ndarray], null: Mapping[str, np.ndarray],
               seed: int, progress: bool = False, noise_offset: int = 0) -> np.ndarray:
    """Samples latents [B, T, H, W, C] (shape of cond['cond_latents']) from noise at `seed`."""
    missing = [k for k in COND_KEYS if k not in cond]
    if missing:
      raise ValueError(f"Sampler: conditioning is missing {missing}")
    b = int(cond["cond_latents"].shape[0])
    shape = tuple(cond["cond_latents"].shape[1:])
    pad, sharded = self.padding(b)
    place = self._batch_sharding if sharded else self._replicated

    def padded(a):
      a = jnp.asarray(a)
      if pad:
        a = jnp.concatenate([a, jnp.repeat(a[-1:], pad, axis=0)], axis=0)
      return jax.device_put(a, place)

    cond_p = {k: padded(cond[k]) for k in COND_KEYS}
    null_p = {k: padded(np.broadcast_to(null[k], (b,) + null[k].shape[1:]))
              for k in ("text", "text_mask", "pooled")}
    eps0 = padded(initial_noise(seed, b, shape, noise_offset))
    cond_p["cond_mask"] = cond_p["cond_mask"].astype(bool)
    times = jax.device_put(jnp.asarray(time_grid(self.cfg.steps, self.cfg.schedule,
                                                 self.cfg.shift), jnp.float32), self._replicated)
    sde_key = jax.random.fold_in(jax.random.key(int(seed)), 1 << 30)
    x = eps0
    steps = range(self.cfg.steps)
    if progress:
      from tqdm import tqdm
      steps = tqdm(steps, desc=f"sampling ({self.cfg.solver})", unit="step")
    step = self.step_for(sharded_inputs=sharded)
    for i in steps:
      x = step(self.params, x, np.int32(i), times, cond_p, null_p, eps0, sde_key)
    return np.asarray(jax.device_get(x))[:b]
