r"""KO on a transformer: a byte-level GPT on Python's own documentation.

The KO paper tried its optimizer on nanoGPT's ``lm_head`` and stopped at an
out-of-memory error. Here a small GPT (Flax NNX) learns to predict the
bytes of real English text that every CPython ships, so the experiment runs
offline:

* **Data.** ``pydoc_data.topics``, Python's reference documentation
  (79 topics, about 466 KB). The topics are sorted by name and every tenth
  (the 10th, 20th, ...) is held out for validation: a deterministic split
  by topic, so no validation text appears in training. Bytes are the tokens
  (vocabulary 256). ``--text PATH`` trains on any UTF-8 file instead (its
  last 10 % validate).
* **Model.** Pre-LayerNorm blocks (causal multi-head attention with
  separate query, key, value and output projections, as in Qwen2, and an
  MLP 4× wide with GELU), learned positions, an untied ``lm_head``. The
  blocks are created with ``nnx.vmap`` and applied with ``nnx.scan``, so
  every block kernel has a leading layer axis: ``blocks/mlp_in/kernel`` is
  ``(layers, d_model, 4·d_model)``, and a collision on it needs
  ``layer_axes=0`` (each layer's neurons collide among themselves).
* **Optimizers** (nanoGPT's: the gradient's global norm clipped at 1, then
  AdamW with betas 0.9/0.95, weight decay 0.1 on the matrices only, not on
  norms, biases or embeddings; linear warm-up then cosine decay to a tenth
  of the peak), each over several seeds, every collision between the
  clipping and AdamW:

  - ``adamw``: AdamW alone;
  - ``soft_head``: soft collision on ``lm_head/kernel`` (its 256 byte
    neurons, 128 features each);
  - ``normed_head``: the authors' norm-matched soft collision (``wg_e``:
    ``include_self=False, normalize=True, min_similarity=0.0``) on
    ``lm_head/kernel``;
  - ``hard_head`` / ``disjoint_head``: hard collision on ``lm_head/kernel``,
    ``pairing="all"`` (every one of the 32,640 pairs tested) and
    ``"disjoint"`` (a random perfect matching per step);
  - ``soft_mlp``: soft collision on every stacked MLP kernel
    (``blocks/mlp_in/kernel``, ``blocks/mlp_out/kernel``, ``layer_axes=0``);
  - ``last_block``: the authors' own LLM recipe (their nanoGPT
    ``train.py``): soft collision ``wg`` with ``min_similarity=0.0`` and
    ``noise_scale=1e-4`` on the attention and MLP kernels of the last block
    only (``layer_axes=0, layers=-1``).

  ``METHOD@C`` runs a method with ``coll_coef = C`` (the default run sweeps
  the coefficient of one variant this way).

* **Measured.** Validation loss in bits per byte (natural-log loss /
  ln 2) along the run on fixed validation windows and at the end on all of
  them; the condensation (max/mean ``|cos|``,
  :func:`kinetix.metrics.condensation`) of the ``lm_head`` neurons and of
  the MLP neurons (per layer, averaged); the collision statistics from the
  optimizer state (``relative_change``, ``accepted_fraction``); each
  collision's own Theorem 3.3 rate at every step
  (:func:`kinetix.experiments._common.collision_rate` on the collided
  layers); and the time per step of each optimizer relative to AdamW (the
  training program alone: compilation and evaluation excluded; every
  method computes the update without its collision too, for the rate).

Seeds run one after another through the same compiled training program
(a ``lax.scan`` over steps, no host round trips; under ``vmap`` the hard
collision's ``lax.cond`` over chunks of accepted pairs would become a
select and run every chunk). It returns the parameters every
``eval_every`` steps; one evaluation program, shared by all methods,
computes the validation loss and the condensation from them.

Run it with ``python -m kinetix lm``; programmatic use::

    from kinetix.experiments import lm
    settings = lm.Settings(steps=50, seeds=1, methods=('adamw', 'soft_head'))
    results = lm.run_experiment(settings)
    summary = lm.summarize(results, settings)
"""

import argparse
import dataclasses
import functools
import math
import pathlib
import sys
import time
from typing import Any

from kinetix.experiments import _common

NAME = 'lm'

METHODS = ('adamw', 'soft_head', 'normed_head', 'hard_head', 'disjoint_head',
           'soft_mlp', 'last_block')
METHOD_LABELS = {
    'adamw': 'AdamW',
    'soft_head': '+ soft (lm_head)',
    'normed_head': '+ soft, norm-matched (lm_head)',
    'hard_head': '+ hard, all pairs (lm_head)',
    'disjoint_head': '+ hard, disjoint (lm_head)',
    'soft_mlp': '+ soft (MLP kernels, layer_axes=0)',
    'last_block': "+ soft, authors' recipe (last block)",
}
# The default run: every method but ``soft_mlp`` (the authors' recipe
# collides the MLP of the last block), and a sweep of the coefficient of the
# variant with the best validation loss at c = 0.1 (disjoint pairing on the
# head; the norm-matched head at 0.03 and 0.3 was no better than at 0.1).
DEFAULT_METHODS = ('adamw', 'soft_head', 'normed_head', 'hard_head',
                   'disjoint_head', 'last_block')
SWEEP = ('disjoint_head@0.03', 'disjoint_head@0.3')
VOCAB = 256
HEAD = 'lm_head/kernel'
MLP_KERNELS = ('blocks/mlp_in/kernel', 'blocks/mlp_out/kernel')
BLOCK_KERNELS = tuple(f'blocks/{name}/kernel' for name in (
    'attn_q', 'attn_k', 'attn_v', 'attn_out', 'mlp_in', 'mlp_out'))
# Leaves AdamW does not decay (nanoGPT): embeddings, norms and biases.
NO_DECAY = ('tok_emb/embedding', 'pos_emb/embedding')


def method_name(method: str) -> str:
  """The name of ``'name'`` or ``'name@C'``."""
  return method.partition('@')[0]


def parse_method(method: str, coll_coef: float) -> tuple[str, float]:
  """``(name, coll_coef)`` of ``'name'`` or ``'name@C'`` (``ValueError``)."""
  name, _, coef = method.partition('@')
  if name not in METHODS:
    raise ValueError(f'unknown method {method!r}; choose from '
                     f'{", ".join(METHODS)} (NAME@C sets its coll_coef)')
  if not coef:
    return name, coll_coef
  if name == 'adamw':
    raise ValueError(f'{method!r}: adamw has no collision coefficient')
  try:
    c = float(coef)
  except ValueError:
    raise ValueError(f'{method!r}: the coefficient after @ must be a '
                     f'number') from None
  if not 0.0 <= c <= 1.0:
    raise ValueError(f'{method!r}: coll_coef must be in [0, 1]')
  return name, c


def method_label(method: str) -> str:
  """The table's label of ``'name'`` or ``'name@C'``."""
  name, _, coef = method.partition('@')
  return METHOD_LABELS[name] + (f', c = {coef}' if coef else '')


@dataclasses.dataclass(frozen=True)
class Settings:
  """Everything that defines one run (written into the JSON and figures)."""
  methods: tuple[str, ...] = DEFAULT_METHODS + SWEEP
  seeds: int = 3
  steps: int = 300
  layers: int = 4
  d_model: int = 128
  heads: int = 4
  context: int = 64
  batch_size: int = 16
  learning_rate: float = 3e-3
  warmup_steps: int = 30
  b1: float = 0.9
  b2: float = 0.95
  weight_decay: float = 0.1
  grad_clip: float = 1.0           # nanoGPT's; 0 for none
  coll_coef: float = 0.1
  # The authors' code's κ (as in the digits experiment): with the paper's
  # κ = 1, the lm_head's neurons (|w_i − w_j| ≈ 0.3 at initialisation) damp
  # every pair below the acceptance threshold 1 − c = 0.9.
  distance_scale: float = 0.05
  eval_every: int = 25
  eval_windows: int = 64
  text: str | None = None

  def __post_init__(self):
    """Rejects unknown methods and out-of-range numbers (``ValueError``)."""
    if not self.methods:
      raise ValueError(f'no method chosen; choose from {", ".join(METHODS)}')
    for m in self.methods:
      parse_method(m, self.coll_coef)
    if len(set(self.methods)) != len(self.methods):
      raise ValueError(f'methods repeat: {self.methods}')
    if self.grad_clip < 0:
      raise ValueError(f'grad_clip must be >= 0; got {self.grad_clip}')
    for field in ('seeds', 'steps', 'layers', 'd_model', 'heads', 'context',
                  'batch_size', 'eval_every', 'eval_windows'):
      if getattr(self, field) < 1:
        raise ValueError(f'{field} must be >= 1; got {getattr(self, field)}')
    if self.d_model % self.heads:
      raise ValueError(f'd_model ({self.d_model}) must be a multiple of heads '
                       f'({self.heads})')
    if not 0 <= self.warmup_steps < self.steps:
      raise ValueError(f'warmup_steps must be in [0, steps); got '
                       f'{self.warmup_steps}')
    if not 0.0 <= self.coll_coef <= 1.0:
      raise ValueError(f'coll_coef must be in [0, 1]; got {self.coll_coef}')

  def describe(self) -> str:
    """One line for the tables, figures and the console."""
    data = (f'text {pathlib.Path(self.text).name}' if self.text
            else 'pydoc_data.topics')
    return (f'byte-level GPT on {data}: {self.layers} layers, d_model '
            f'{self.d_model}, {self.heads} heads, context {self.context}, '
            f'batch {self.batch_size}, {self.steps} steps; AdamW lr '
            f'{self.learning_rate:g} (warm-up {self.warmup_steps}, cosine), '
            f'betas {self.b1:g}/{self.b2:g}, wd {self.weight_decay:g}, '
            f'grad clip {self.grad_clip:g}; collisions coll_coef '
            f'{self.coll_coef:g}, hard distance_scale '
            f'{self.distance_scale:g}; {self.seeds} seeds')


# --------------------------------------------------------------------------
# Data


MISSING_CORPUS = (
    "this Python has no 'pydoc_data.topics' module (Python's reference "
    'documentation, which some distributions strip); pass --text PATH to '
    'train on any UTF-8 text file')


class CorpusUnavailable(RuntimeError):
  """The built-in corpus is missing from this Python installation."""


def load_corpus(text: str | None = None):
  """``(train, validation)`` byte arrays (``uint8``) and a description.

  Without ``text``: Python's ``pydoc_data.topics``, split by topic (sorted
  names; every tenth topic validates). With ``text``: the file's UTF-8
  bytes, the last 10 % validating.

  Raises:
    CorpusUnavailable: ``pydoc_data`` is not installed (some distributions
      strip it) and no ``text`` was given.
  """
  import numpy as np  # pylint: disable=g-import-not-at-top
  if text is not None:
    data = pathlib.Path(text).read_text(encoding='utf-8').encode('utf-8')
    if len(data) < 1000:
      raise ValueError(f'--text {text}: {len(data)} bytes; need at least '
                       f'1000')
    cut = int(0.9 * len(data))
    return (np.frombuffer(data[:cut], np.uint8),
            np.frombuffer(data[cut:], np.uint8),
            f'{pathlib.Path(text).name}: {cut} train / {len(data) - cut} '
            f'validation bytes (last 10 %)')
  try:
    from pydoc_data import topics  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise CorpusUnavailable(MISSING_CORPUS) from e
  names = sorted(topics.topics)
  train = [topics.topics[n] for i, n in enumerate(names) if i % 10 != 9]
  valid = [topics.topics[n] for i, n in enumerate(names) if i % 10 == 9]
  join = lambda parts: '\n\n'.join(parts).encode('utf-8')  # noqa: E731
  tr, va = join(train), join(valid)
  return (np.frombuffer(tr, np.uint8), np.frombuffer(va, np.uint8),
          f'pydoc_data.topics: {len(train)} topics / {len(tr)} bytes train, '
          f'{len(valid)} topics / {len(va)} bytes validation')


def validation_windows(valid, context: int, count: int | None = None):
  """Non-overlapping ``(n, context + 1)`` windows of the validation bytes.

  ``count`` picks that many, evenly spread (all of them when ``None``).
  """
  import numpy as np  # pylint: disable=g-import-not-at-top
  n = (len(valid) - 1) // (context + 1)
  windows = np.asarray(valid[:n * (context + 1)]).reshape(n, context + 1)
  if count is not None and count < n:
    windows = windows[np.linspace(0, n - 1, count).astype(int)]
  return windows


# --------------------------------------------------------------------------
# Model


def make_model(settings: Settings, key: Any = 0):
  """The GPT of ``settings`` (Flax NNX), initialised from ``key``.

  ``key``: an int seed or a typed key (also a traced one).
  """
  from flax import nnx  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top

  d, heads = settings.d_model, settings.heads
  init = nnx.initializers.normal(0.02)
  # GPT-2's scaled init of the projections back into the residual stream.
  out_init = nnx.initializers.normal(0.02 / math.sqrt(2 * settings.layers))

  class Block(nnx.Module):
    """Pre-LayerNorm transformer block."""

    def __init__(self, rngs: nnx.Rngs):
      self.ln1 = nnx.LayerNorm(d, rngs=rngs)
      self.attn_q = nnx.Linear(d, d, kernel_init=init, rngs=rngs)
      self.attn_k = nnx.Linear(d, d, kernel_init=init, rngs=rngs)
      self.attn_v = nnx.Linear(d, d, kernel_init=init, rngs=rngs)
      self.attn_out = nnx.Linear(d, d, kernel_init=out_init, rngs=rngs)
      self.ln2 = nnx.LayerNorm(d, rngs=rngs)
      self.mlp_in = nnx.Linear(d, 4 * d, kernel_init=init, rngs=rngs)
      self.mlp_out = nnx.Linear(4 * d, d, kernel_init=out_init, rngs=rngs)

    def __call__(self, x, mask):
      h = self.ln1(x)
      split = lambda y: y.reshape(*y.shape[:-1], heads, d // heads)  # noqa: E731
      att = nnx.dot_product_attention(
          split(self.attn_q(h)), split(self.attn_k(h)), split(self.attn_v(h)),
          mask=mask)
      x = x + self.attn_out(att.reshape(x.shape))
      return x + self.mlp_out(jax.nn.gelu(self.mlp_in(self.ln2(x))))

  class GPT(nnx.Module):
    """Byte embeddings, stacked blocks, final norm, untied ``lm_head``."""

    def __init__(self, rngs: nnx.Rngs):
      self.tok_emb = nnx.Embed(VOCAB, d, embedding_init=init, rngs=rngs)
      self.pos_emb = nnx.Embed(settings.context, d, embedding_init=init,
                               rngs=rngs)

      @nnx.split_rngs(splits=settings.layers)
      @nnx.vmap(in_axes=(0,), out_axes=0)
      def create_blocks(rngs: nnx.Rngs):
        return Block(rngs)

      self.blocks = create_blocks(rngs)
      self.ln_f = nnx.LayerNorm(d, rngs=rngs)
      self.lm_head = nnx.Linear(d, VOCAB, use_bias=False, kernel_init=init,
                                rngs=rngs)

    def __call__(self, tokens):
      t = tokens.shape[-1]
      x = self.tok_emb(tokens) + self.pos_emb(jnp.arange(t))
      mask = nnx.make_causal_mask(tokens)

      @nnx.scan(in_axes=(nnx.Carry, 0), out_axes=nnx.Carry)
      def forward(x, block):
        return block(x, mask)

      x = forward(x, self.blocks)
      return self.lm_head(self.ln_f(x))

  if isinstance(key, int):
    key = jax.random.key(key)
  return GPT(nnx.Rngs(key))


def split_model(model):
  """``(graphdef, params, rest)``: params as a plain nested dict of arrays.

  Plain dicts make the masks' paths ``lm_head/kernel``,
  ``blocks/mlp_in/kernel``, and keep Optax's state free of NNX types.
  """
  from flax import nnx  # pylint: disable=g-import-not-at-top
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  return graphdef, nnx.to_pure_dict(params), rest


def merge_model(graphdef, params, rest):
  """The model of :func:`split_model`'s parts (inside or outside a trace)."""
  from flax import nnx  # pylint: disable=g-import-not-at-top
  state = nnx.State(params)
  return nnx.merge(graphdef, state, rest)


def make_optimizer(method: str, settings: Settings, key: Any = 0
                   ) -> _common.WithCollision:
  """Clipping → the collision of ``method`` → nanoGPT's AdamW.

  ``method``: a name of :data:`METHODS`, or ``'name@C'`` for
  ``coll_coef = C``.
  """
  import optax  # pylint: disable=g-import-not-at-top
  from kinetix import kinetic, masks  # pylint: disable=g-import-not-at-top
  method, c = parse_method(method, settings.coll_coef)
  schedule = optax.warmup_cosine_decay_schedule(
      0.0, settings.learning_rate, settings.warmup_steps, settings.steps,
      end_value=settings.learning_rate / 10)
  decay = masks.all_of(masks.by_ndim(2), masks.invert(masks.by_path(*NO_DECAY)))
  adamw = optax.adamw(schedule, b1=settings.b1, b2=settings.b2,
                      weight_decay=settings.weight_decay, mask=decay)
  head = masks.by_path(HEAD)
  if method == 'adamw':
    collision = optax.identity()
  elif method == 'soft_head':
    collision = kinetic.soft_collision(c, mask=head, key=key)
  elif method == 'normed_head':
    collision = kinetic.soft_collision(
        c, mask=head, key=key, include_self=False, normalize=True,
        min_similarity=0.0)
  elif method in ('hard_head', 'disjoint_head'):
    collision = kinetic.hard_collision(
        c, mask=head, key=key, distance_scale=settings.distance_scale,
        pairing='all' if method == 'hard_head' else 'disjoint')
  elif method == 'soft_mlp':
    collision = kinetic.soft_collision(c, mask=masks.by_path(*MLP_KERNELS),
                                       layer_axes=0, key=key)
  else:  # 'last_block', the authors' LLM recipe
    collision = kinetic.soft_collision(
        c, mask=masks.by_path(*BLOCK_KERNELS), layer_axes=0, layers=-1,
        min_similarity=0.0, noise_scale=1e-4, key=key)
  clip = (optax.clip_by_global_norm(settings.grad_clip)
          if settings.grad_clip > 0 else None)
  return _common.WithCollision(collision, adamw, pre=clip)


def collided_layers(method: str, tree: Any) -> dict[str, Any]:
  """The layers ``method`` collides, as ``{name: (L, D, N)}`` arrays."""
  name = method_name(method)
  if name == 'soft_mlp':
    return {k: tree['blocks'][k]['kernel'] for k in ('mlp_in', 'mlp_out')}
  if name == 'last_block':
    return {k.split('/')[1]: tree['blocks'][k.split('/')[1]]['kernel'][-1:]
            for k in BLOCK_KERNELS}
  return {'lm_head': tree['lm_head']['kernel'][None]}


# --------------------------------------------------------------------------
# Training


def _condensation(params):
  """``(head max, head mean, MLP max, MLP mean)`` of ``|cos|``.

  The MLP's are averaged over its stacked layers and its two kernels.
  """
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from kinetix import masks, metrics  # pylint: disable=g-import-not-at-top
  head = metrics.condensation(params, masks.by_path(HEAD))[HEAD]
  mlp = metrics.condensation(params, masks.by_path(*MLP_KERNELS),
                             layer_axes=0)
  mlp_max = jnp.mean(jnp.stack([jnp.mean(s['max_abs_cos'])
                                for s in mlp.values()]))
  mlp_mean = jnp.mean(jnp.stack([jnp.mean(s['mean_abs_cos'])
                                 for s in mlp.values()]))
  return head['max_abs_cos'], head['mean_abs_cos'], mlp_max, mlp_mean


@functools.lru_cache(maxsize=4)
def _model_structure(settings: Settings):
  """``(graphdef, rest)`` of the model: its structure and non-parameter state.

  Built once per settings, under ``jit``: an eager NNX initialisation runs
  (and, on a CPU, compiles) one small program per operation.
  """
  from flax import nnx  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  graphdef, _, _ = nnx.split(nnx.eval_shape(lambda: make_model(settings, 0)),
                             nnx.Param, ...)
  rest = jax.jit(lambda: split_model(make_model(settings, 0))[2])()
  return graphdef, rest


def init_params(settings: Settings, key: Any):
  """The model's parameters (a plain dict) from ``key``, under ``jit``."""
  import jax  # pylint: disable=g-import-not-at-top
  return jax.jit(lambda k: split_model(make_model(settings, k))[1])(key)


def _loss_fn(settings: Settings):
  """``loss(params, windows)``: mean next-byte cross-entropy (nats)."""
  import optax  # pylint: disable=g-import-not-at-top
  graphdef, rest = _model_structure(settings)

  def loss_fn(params, windows):
    logits = merge_model(graphdef, params, rest)(windows[:, :-1])
    return optax.softmax_cross_entropy_with_integer_labels(
        logits, windows[:, 1:]).mean()
  return loss_fn


def lower_training(settings: Settings, train_bytes):
  """The lowered ``run(seed, method, train_bytes) -> dict of arrays``.

  One program for every method of ``settings.methods``: ``method`` (an
  int32 index into them) picks, with ``lax.switch``, which optimizer
  updates the parameters; the model's forward and backward passes are
  shared, so the program compiles once, not once per method, and the time
  per step differs between methods only by their optimizer. The state
  carries every method's optimizer state; only the chosen one changes.

  One ``lax.scan`` over evaluation intervals around a ``lax.scan`` over
  steps (random training windows from the seed's key, a step of the
  optimizer); the parameters at the end of every interval are returned
  for :func:`lower_evaluation`, so the training program holds training
  only (and its time per step excludes the evaluation).
  """
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import optax  # pylint: disable=g-import-not-at-top

  ctx, batch = settings.context, settings.batch_size
  intervals = math.ceil(settings.steps / settings.eval_every)
  train_bytes = jnp.asarray(train_bytes, jnp.int32)
  loss_fn = _loss_fn(settings)

  def run(seed, method, train_bytes):
    key = jax.random.key(seed)
    _, params, _ = split_model(make_model(settings,
                                          jax.random.fold_in(key, 0)))
    txs = [make_optimizer(m, settings, key=jax.random.fold_in(key, 1))
           for m in settings.methods]
    states = tuple(tx.init(params) for tx in txs)
    data_key = jax.random.fold_in(key, 2)

    def branch(k):
      method = settings.methods[k]

      def update(grads, states, params):
        updates, state, plain = txs[k].update(grads, states[k], params)
        rate = (jnp.zeros([], jnp.float32) if method == 'adamw' else
                _common.collision_rate(
                    params, updates, plain,
                    functools.partial(collided_layers, method)))
        stats = (*_common.collision_stats(state), rate)
        return updates, (*states[:k], state, *states[k + 1:]), stats
      return update

    branches = [branch(k) for k in range(len(txs))]

    def step(carry, i):
      params, states = carry
      starts = jax.random.randint(jax.random.fold_in(data_key, i), (batch,),
                                  0, train_bytes.shape[0] - ctx - 1)
      windows = jax.vmap(
          lambda s: jax.lax.dynamic_slice(train_bytes, (s,), (ctx + 1,)))(
              starts)
      loss, grads = jax.value_and_grad(loss_fn)(params, windows)
      updates, states, stats = jax.lax.switch(method, branches, grads,
                                              states, params)
      active = i < settings.steps  # the last interval may be partial
      params = jax.tree.map(lambda p, n: jnp.where(active, n, p), params,
                            optax.apply_updates(params, updates))
      return (params, states), (loss, *stats, active)

    def interval(carry, k):
      carry, logs = jax.lax.scan(
          step, carry, k * settings.eval_every + jnp.arange(
              settings.eval_every))
      return carry, (logs, carry[0])

    _, (logs, snapshots) = jax.lax.scan(
        interval, (params, states), jnp.arange(intervals))
    # The initialisation first: evaluations at steps 0, eval_every, ...
    snapshots = jax.tree.map(
        lambda p0, ps: jnp.concatenate([p0[None], ps]), params, snapshots)
    loss, rel, acc, rate, active = (x.reshape(-1) for x in logs)
    return {'snapshots': snapshots, 'train_loss': loss,
            'relative_change': rel, 'accepted_fraction': acc,
            'collision_rate': rate, 'active': active}

  zero = jnp.zeros([], jnp.int32)
  return jax.jit(run).lower(zero, zero, train_bytes)


def lower_evaluation(settings: Settings, eval_windows, snapshots):
  """The lowered ``(snapshots, eval_windows) -> (val loss, condensation)``.

  For parameters stacked along a leading axis (one per evaluation), the
  validation loss on ``eval_windows`` and the four condensation numbers of
  :func:`_condensation`, one snapshot at a time (``lax.map``). One program
  shared by every method.
  """
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  loss_fn = _loss_fn(settings)

  def evaluate(snapshots, windows):
    return jax.lax.map(
        lambda p: (loss_fn(p, windows), jnp.stack(_condensation(p))),
        snapshots)

  return jax.jit(evaluate).lower(snapshots, jnp.asarray(eval_windows,
                                                        jnp.int32))


def compile_all(lowered: dict[str, Any], *,
                fast_compile: bool = False) -> dict[str, Any]:
  """``{name: lowered.compile()}``, before any program runs.

  ``fast_compile``: XLA's backend optimisations off (about 2x faster to
  compile these programs, slower to run; for ``--quick``).
  """
  options = _common.FAST_COMPILE if fast_compile else None
  return {name: low.compile(options) for name, low in lowered.items()}


def lower_final_loss(settings: Settings, windows, params):
  """The lowered ``(params, windows) -> mean loss`` (nats per byte).

  One window at a time (``lax.map``), so memory does not grow with the
  validation set. ``params``: arrays or ``jax.ShapeDtypeStruct`` values.
  """
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  loss_fn = _loss_fn(settings)

  def loss(params, windows):
    return jax.lax.map(lambda w: loss_fn(params, w[None]), windows).mean()

  return jax.jit(loss).lower(params, jnp.asarray(windows, jnp.int32))


def run_seeds(run, settings: Settings, train_bytes, evaluate,
              final_loss) -> dict[str, Any]:
  """All seeds of one method, one after another; NumPy arrays.

  ``run(seed, train_bytes)``: :func:`lower_training`'s program,
  compiled, with the method's index bound; ``evaluate``:
  ``snapshots -> (val loss, condensation)`` (:func:`lower_evaluation`);
  ``final_loss``: ``params -> mean loss`` on all validation windows
  (:func:`lower_final_loss`).

  Returns:
    Per seed (leading axis): ``final_val_bpb`` (all validation windows),
    ``val_bpb`` ``(seeds, evals)`` at steps 0, ``eval_every``, ...,
    ``train_loss``, ``relative_change`` and ``accepted_fraction``
    ``(seeds, steps)``, ``condensation`` ``(seeds, evals, 4)`` (head
    max/mean, MLP max/mean ``|cos|``); plus ``step_seconds``: the median
    over seeds of the training program's time per step (compilation and
    evaluation excluded).
  """
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  out: dict[str, list[Any]] = {}
  seconds = []
  for seed in range(settings.seeds):
    start = time.perf_counter()
    res = jax.block_until_ready(run(jnp.asarray(seed, jnp.int32),
                                    train_bytes))
    seconds.append(time.perf_counter() - start)
    snapshots = res.pop('snapshots')
    res['val_loss'], res['condensation'] = evaluate(snapshots)
    res['final_val_loss'] = final_loss(
        jax.tree.map(lambda x: x[-1], snapshots))
    res = jax.device_get(res)
    active = np.asarray(res.pop('active'), bool)
    for k in ('train_loss', 'relative_change', 'accepted_fraction',
              'collision_rate'):
      res[k] = np.asarray(res[k])[active]
    for k, v in res.items():
      out.setdefault(k, []).append(np.asarray(v))
  result: dict[str, Any] = {k: np.stack(v) for k, v in out.items()}
  result['val_bpb'] = result.pop('val_loss') / math.log(2)
  result['final_val_bpb'] = result.pop('final_val_loss') / math.log(2)
  result['step_seconds'] = float(np.median(seconds)) / settings.steps
  return result


def run_experiment(settings: Settings, *, progress: bool = False,
                   fast_compile: bool = False) -> dict[str, dict[str, Any]]:
  """``results[method]`` = :func:`run_seeds`'s arrays.

  ``results['_data']`` describes the split and ``results['_compile_s']``
  is the time spent tracing and compiling every program (one training
  program per method, one evaluation and one final-loss program shared by
  all), before anything runs.
  """
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  train_bytes, valid_bytes, description = load_corpus(settings.text)
  if len(train_bytes) <= settings.context + 1:
    raise ValueError(f'the training text ({len(train_bytes)} bytes) is '
                     f'shorter than the context ({settings.context})')
  if len(valid_bytes) < settings.context + 1:
    raise ValueError(f'the validation text ({len(valid_bytes)} bytes) is '
                     f'shorter than one window ({settings.context + 1})')
  results: dict[str, Any] = {'_data': description}
  every = jnp.asarray(validation_windows(valid_bytes, settings.context),
                      jnp.int32)
  some = jnp.asarray(validation_windows(valid_bytes, settings.context,
                                        settings.eval_windows), jnp.int32)
  train_bytes = jnp.asarray(train_bytes, jnp.int32)
  bar = _common.progress(total=len(settings.methods) + 1, desc='lm',
                         disable=not progress)
  bar.set_postfix_str('compiling')
  start = time.perf_counter()
  lowered = {'_train': lower_training(settings, train_bytes)}
  snapshots = lowered['_train'].out_info['snapshots']
  lowered['_evaluate'] = lower_evaluation(settings, some, snapshots)
  params = jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape[1:], s.dtype),
                        snapshots)
  lowered['_final'] = lower_final_loss(settings, every, params)
  compiled = compile_all(lowered, fast_compile=fast_compile)
  train = compiled['_train']
  evaluate_program, final = compiled['_evaluate'], compiled['_final']
  evaluate = lambda snaps: evaluate_program(snaps, some)  # noqa: E731
  final_loss = lambda params: final(params, every)  # noqa: E731
  results['_compile_s'] = time.perf_counter() - start
  bar.update(1)
  for index, method in enumerate(settings.methods):
    bar.set_postfix_str(method)
    method_index = jnp.asarray(index, jnp.int32)
    run = lambda seed, data, k=method_index: train(seed, k, data)  # noqa: E731
    results[method] = run_seeds(run, settings, train_bytes, evaluate,
                                final_loss)
    bar.update(1)
  bar.close()
  return results


# --------------------------------------------------------------------------
# Summaries, tables, figures


def summarize(results, settings: Settings) -> dict[str, Any]:
  """JSON-able numbers per method, mean ± std over seeds."""
  rows = []
  base = results.get('adamw', {}).get('step_seconds')
  for method in settings.methods:
    r = results[method]
    cond = r['condensation'][:, -1, :]
    entry = {
        'method': method,
        'final_val_bpb': _common.seed_stats(r['final_val_bpb']),
        'val_bpb_mean': [float(v) for v in r['val_bpb'].mean(axis=0)],
        'eval_steps': [min(k * settings.eval_every, settings.steps)
                       for k in range(r['val_bpb'].shape[1])],
        'final_train_loss': _common.seed_stats(
            r['train_loss'][:, -10:].mean(axis=1)),
        'head_max_abs_cos': _common.seed_stats(cond[:, 0]),
        'head_mean_abs_cos': _common.seed_stats(cond[:, 1]),
        'mlp_max_abs_cos': _common.seed_stats(cond[:, 2]),
        'mlp_mean_abs_cos': _common.seed_stats(cond[:, 3]),
        'init_head_mean_abs_cos': _common.seed_stats(
            r['condensation'][:, 0, 1]),
        'init_mlp_mean_abs_cos': _common.seed_stats(
            r['condensation'][:, 0, 3]),
        'relative_change': _common.seed_stats(
            r['relative_change'].mean(axis=1)),
        'accepted_fraction': _common.seed_stats(
            r['accepted_fraction'].mean(axis=1)),
        'step_seconds': r['step_seconds'],
        'step_time_vs_adamw': (r['step_seconds'] / base) if base else None,
    }
    if method != 'adamw':
      entry['collision_rate'] = _common.rate_stats(r['collision_rate'])
    rows.append(entry)
  return {'settings': dataclasses.asdict(settings), 'data': results['_data'],
          'compile_seconds': results['_compile_s'], 'results': rows}


def markdown(summary: dict[str, Any]) -> str:
  """The Markdown table and its caption, from :func:`summarize`'s output."""
  s = _common.settings_from_json(Settings, summary['settings'])
  rows = []
  for e in summary['results']:
    name = method_name(e['method'])
    hard = name in ('hard_head', 'disjoint_head')
    collides = name != 'adamw'
    ratio = e['step_time_vs_adamw']
    rows.append([
        method_label(e['method']),
        _common.fmt_stat(e['final_val_bpb']),
        _common.fmt_stat(e['head_mean_abs_cos']),
        _common.fmt_stat(e['mlp_mean_abs_cos']),
        _common.fmt_stat(e['relative_change'], 4) if collides else '—',
        f"{100 * e['accepted_fraction']['mean']:.3f} %" if hard else '—',
        _common.fmt_rate(e.get('collision_rate')),
        '—' if ratio is None else f'{ratio:.2f}×',
    ])
  init = summary['results'][0]
  text = (f"{summary['data']}. {s.describe()}. Mean ± std over seeds. "
          'Validation loss in bits per byte on every validation window after '
          'the last step; |cos|: mean off-diagonal |cos| between the '
          "lm_head's 256 byte neurons and between the MLP kernels' neurons "
          '(per layer, averaged), at the end (at initialisation: '
          f"{init['init_head_mean_abs_cos']['mean']:.3f} and "
          f"{init['init_mlp_mean_abs_cos']['mean']:.3f}); relative change: "
          "|Δg| / |g| of the collided leaves, mean over steps; accepted: "
          'pairs collided / pairs tested, mean over steps; rate: the '
          "collision's own d mean|cos|/dη of the layers it collides "
          '(Theorem 3.3; negative = decorrelating), mean over steps, and '
          'the share of steps where it is negative / positive; time per step '
          'relative to AdamW (the training program alone, with the '
          'diagnostics: compilation and evaluation excluded).\n\n')
  text += _common.markdown_table(
      ['optimizer', 'val bits/byte', 'lm_head mean |cos|',
       'MLP mean |cos|', 'relative change', 'hard: accepted',
       _common.RATE_HEADER, 'time / step'], rows)
  if 'runtime_s' in summary:
    text += f"\nRun time: {summary['runtime_s']:.0f} s.\n"
  return text


def curves_figure(summary: dict[str, Any], results):
  """Validation bits/byte along the run and the final condensation."""
  from matplotlib.figure import Figure  # pylint: disable=g-import-not-at-top
  from kinetix import plotting  # pylint: disable=g-import-not-at-top
  import textwrap  # pylint: disable=g-import-not-at-top
  s = _common.settings_from_json(Settings, summary['settings'])
  fig = Figure(figsize=(11.0, 3.8), layout='constrained')
  ax_loss, ax_head, ax_mlp = fig.subplots(1, 3)
  steps = summary['results'][0]['eval_steps']
  plotting.training_curves(
      {method_label(m): results[m]['val_bpb'] for m in s.methods}, ax_loss,
      x=steps, ylabel='validation bits / byte', title='validation loss')
  ax_loss.legend(fontsize=7)
  plotting.training_curves(
      {method_label(m): results[m]['condensation'][:, :, 1]
       for m in s.methods}, ax_head, x=steps,
      ylabel='mean |cos|', title='lm_head neurons')
  plotting.training_curves(
      {method_label(m): results[m]['condensation'][:, :, 3]
       for m in s.methods}, ax_mlp, x=steps,
      ylabel='mean |cos|', title='MLP neurons (per layer)')
  fig.suptitle(textwrap.fill(s.describe(), 150), fontsize=8)
  return fig


# --------------------------------------------------------------------------
# CLI


def add_arguments(parser: argparse.ArgumentParser) -> None:
  """The options of ``python -m kinetix lm``."""
  d = Settings()
  parser.add_argument('--methods', default=','.join(d.methods),
                      help=f'comma-separated, from: {", ".join(METHODS)}; '
                           'NAME@C runs NAME with coll_coef C')
  parser.add_argument('--steps', type=_common.positive_int, default=None,
                      help=f'training steps (default: {d.steps}; --quick: 20)')
  parser.add_argument('--layers', type=_common.positive_int, default=None,
                      help=f'transformer blocks (default: {d.layers}; '
                           '--quick: 2)')
  parser.add_argument('--d-model', type=_common.positive_int, default=None,
                      help=f'model width (default: {d.d_model}; --quick: 32)')
  parser.add_argument('--context', type=_common.positive_int, default=None,
                      help=f'context length in bytes (default: {d.context}; '
                           '--quick: 32)')
  parser.add_argument('--batch-size', type=_common.positive_int,
                      default=None,
                      help=f'sequences per step (default: {d.batch_size}; '
                           '--quick: 8)')
  parser.add_argument('--lr', type=float, default=d.learning_rate,
                      help='peak AdamW learning rate')
  parser.add_argument('--coll-coef', type=float, default=d.coll_coef,
                      help='collision coefficient c (soft and hard)')
  parser.add_argument('--grad-clip', type=float, default=d.grad_clip,
                      help='clip the global gradient norm at this (0: none)')
  parser.add_argument('--distance-scale', type=float,
                      default=d.distance_scale,
                      help='hard collision kappa in exp(-kappa |w_i - w_j|)')
  parser.add_argument('--text', default=None, metavar='PATH',
                      help='train on this UTF-8 file instead of Python\'s '
                           'pydoc_data.topics (its last 10 %% validate)')
  _common.add_common_arguments(parser, default_seeds=d.seeds)


def settings_from_args(args: argparse.Namespace) -> Settings:
  """The :class:`Settings` of the command-line options."""
  d, quick = Settings(), args.quick
  steps = args.steps or (20 if quick else d.steps)
  return Settings(
      methods=_common.names(args.methods),
      seeds=_common.resolve_seeds(args, d.seeds),
      steps=steps,
      layers=args.layers or (2 if quick else d.layers),
      d_model=args.d_model or (32 if quick else d.d_model),
      heads=2 if quick and not args.d_model else d.heads,
      context=args.context or (32 if quick else d.context),
      batch_size=args.batch_size or (8 if quick else d.batch_size),
      learning_rate=args.lr, coll_coef=args.coll_coef,
      grad_clip=args.grad_clip, distance_scale=args.distance_scale,
      warmup_steps=min(d.warmup_steps, steps // 10),
      eval_every=min(d.eval_every, max(1, steps // 4)),
      eval_windows=16 if quick else d.eval_windows,
      text=args.text)


def run(args: argparse.Namespace) -> int:
  """``python -m kinetix lm``: runs, writes the files, prints."""
  def compute(settings):
    results = run_experiment(settings, progress=not args.no_progress,
                             fast_compile=bool(args.quick))
    return results, summarize(results, settings)

  def figures(results, summary, settings):
    del settings
    return {'lm.png': curves_figure(summary, results)}

  try:
    return _common.run_command(
        args, NAME, settings_from_args=settings_from_args, compute=compute,
        markdown=markdown, figures=figures)
  except CorpusUnavailable as e:  # raised before any training or output
    print(f'kinetix lm: {e}', file=sys.stderr)
    return 2
