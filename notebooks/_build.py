"""Writes the notebooks in this folder (run: ``python notebooks/_build.py``).

The ``.ipynb`` files are generated from the cell sources below and stored
without outputs; edit the cells here, re-run this script, and commit both.
``tests/test_notebooks.py`` executes every notebook in SMOKE mode
(``KINETIX_SMOKE=1``) and checks that the stored files carry no outputs.
"""

from __future__ import annotations

import pathlib
import textwrap

import nbformat
from nbformat import v4

HERE = pathlib.Path(__file__).resolve().parent

INSTALL = '''\
# Colab: install kinetix with the example extras (Flax, matplotlib, sklearn).
import sys
if 'google.colab' in sys.modules:
  !pip install -q kinetix[examples]'''

DEVICES = '''\
import jax
print('JAX', jax.__version__, '| backend:', jax.default_backend())
print(jax.devices())  # GPU/TPU if the runtime has one, else CPU'''

SMOKE_FLAG = '''\
import os
# SMOKE: tiny sizes, a few steps, no downloads (the tests run it this way).
SMOKE = os.environ.get('KINETIX_SMOKE', '0') == '1'
print('SMOKE mode' if SMOKE else 'full mode')'''


def _cell(kind: str, text: str):
  text = textwrap.dedent(text).strip('\n')
  return v4.new_markdown_cell(text) if kind == 'md' else v4.new_code_cell(text)


def _notebook(cells) -> nbformat.NotebookNode:
  nb = v4.new_notebook()
  nb.cells = [_cell(kind, text) for kind, text in cells]
  for i, cell in enumerate(nb.cells):
    cell.id = f'cell-{i:02d}'  # stable ids: rebuilding gives the same file
  nb.metadata = {
      'kernelspec': {'name': 'python3', 'display_name': 'Python 3',
                     'language': 'python'},
      'language_info': {'name': 'python'},
      'accelerator': 'GPU',
      'colab': {'provenance': []},
  }
  return nb


# ---------------------------------------------------------------------------
# 01: quick start

QUICKSTART = [
    ('md', '''
     # kinetix quick start

     **KO**, the Kinetics-inspired Optimizer (Feng et al. 2025), lets the
     neurons of a layer *collide* before an ordinary optimizer steps: a
     **soft collision** (a repulsion built from weight and gradient cosine
     similarities) or a **hard collision** (DSMC-style elastic collisions
     between neuron pairs). Both fight *condensation*, neurons of one layer
     collapsing onto the same direction. In kinetix they are Optax
     `GradientTransformation`s: chain them in front of any optimizer, and pass
     `params` to `update`.
     '''),
    ('code', INSTALL),
    ('code', DEVICES),
    ('code', SMOKE_FLAG),
    ('code', '''
     %matplotlib inline
     import jax.numpy as jnp
     import numpy as np
     import optax
     from IPython.display import display
     from matplotlib.figure import Figure

     import kinetix
     from kinetix import plotting
     '''),
    ('md', '''
     ## One step

     A soft collision on the classifier kernel only (the KO paper collides the
     last layer), then AdamW. The collision's state records what it did:
     `mean_abs_cos` of the selected neurons and `relative_change`
     (`|Δg| / |g|`), useful to tune `coll_coef`.
     '''),
    ('code', '''
     k1, k2 = jax.random.split(jax.random.key(0))
     params = {'body': {'kernel': 0.1 * jax.random.normal(k1, (64, 128))},
               'head': {'kernel': 0.1 * jax.random.normal(k2, (128, 10))}}
     head = kinetix.masks.by_path('head/kernel')
     print('mask:', head(params))

     tx = optax.chain(
         kinetix.soft_collision(coll_coef=0.1, mask=head),
         optax.adamw(1e-3, weight_decay=0.05),
     )
     state = tx.init(params)

     @jax.jit
     def step(params, state, x, y):
       def loss_fn(p):
         h = jnp.tanh(x @ p['body']['kernel'])
         return jnp.mean((h @ p['head']['kernel'] - y) ** 2)
       loss, grads = jax.value_and_grad(loss_fn)(params)
       updates, state = tx.update(grads, state, params)  # needs params
       return optax.apply_updates(params, updates), state, loss

     x, y = jnp.ones((32, 64)), jnp.ones((32, 10))
     params, state, loss = step(params, state, x, y)
     print(f'loss {float(loss):.4f}, head mean |cos| '
           f'{float(state[0].mean_abs_cos):.3f}, the collision changed the '
           f'head gradient by {100 * float(state[0].relative_change):.1f} %')
     '''),
    ('md', '''
     ## Training on real data: digits, with and without collisions

     `load_digits` ships with scikit-learn (no download). An MLP 64-128-10
     trained with `kinetix.ko_adamw`, which is collision → AdamW in one
     transformation: `collision='none'` (plain AdamW), `'soft'` and `'hard'`,
     each on the head's kernel only. For the hard collision we use the
     authors' code's `distance_scale` κ = 0.05: with the paper's κ = 1 hardly
     any pair of a freshly initialised head passes the acceptance test.
     '''),
    ('code', '''
     from sklearn import datasets, model_selection

     xs, ys = datasets.load_digits(return_X_y=True)
     x_train, x_test, y_train, y_test = model_selection.train_test_split(
         xs.astype(np.float32), ys, test_size=0.25, random_state=0, stratify=ys)
     mean, std = x_train.mean(0), x_train.std(0)
     std = np.where(std > 0, std, 1.0)
     x_train, x_test = (x_train - mean) / std, (x_test - mean) / std

     STEPS = 20 if SMOKE else 600
     BATCH = 128

     def init(key, hidden=128):
       k1, k2 = jax.random.split(key)
       glorot = jax.nn.initializers.glorot_normal()
       return {'body': {'kernel': glorot(k1, (64, hidden)),
                        'bias': jnp.zeros(hidden)},
               'head': {'kernel': glorot(k2, (hidden, 10)),
                        'bias': jnp.zeros(10)}}

     def apply(p, x):
       h = jnp.tanh(x @ p['body']['kernel'] + p['body']['bias'])
       return h @ p['head']['kernel'] + p['head']['bias']

     def loss_fn(p, x, y):
       return optax.softmax_cross_entropy_with_integer_labels(apply(p, x),
                                                              y).mean()

     def train(collision, seed=0):
       options = {'distance_scale': 0.05} if collision == 'hard' else None
       tx = kinetix.ko_adamw(1e-3, collision=collision, mask=head,
                             collision_options=options)
       params = init(jax.random.key(seed))
       state = tx.init(params)

       @jax.jit
       def step(params, state, x, y):
         loss, grads = jax.value_and_grad(loss_fn)(params, x, y)
         updates, state = tx.update(grads, state, params)
         return optax.apply_updates(params, updates), state, loss

       rng = np.random.default_rng(seed)
       losses = []
       for _ in range(STEPS):
         idx = rng.choice(len(x_train), BATCH, replace=False)
         params, state, loss = step(params, state, x_train[idx], y_train[idx])
         losses.append(loss)
       acc = float(jnp.mean(jnp.argmax(apply(params, x_test), -1) == y_test))
       return params, np.asarray(losses), acc

     runs = {}
     for collision in ('none', 'soft', 'hard'):
       params, losses, acc = train(collision)
       cond = kinetix.metrics.condensation(params, head)['head/kernel']
       runs[collision] = (params, losses)
       print(f'{collision:>5}: test accuracy {acc:.4f}, head max |cos| '
             f"{float(cond['max_abs_cos']):.3f}, mean |cos| "
             f"{float(cond['mean_abs_cos']):.3f}")
     '''),
    ('md', '''
     The head's 10 neurons (one per class) as a cosine-similarity heat map
     (`kinetix.metrics.neuron_cosine`, `kinetix.plotting.similarity_heatmap`:
     beige = same direction, navy = opposite), and the training losses.
     '''),
    ('code', '''
     fig = Figure(figsize=(12, 3), layout='constrained')
     axes = fig.subplots(1, 4)
     for ax, (name, (params, _)) in zip(axes, runs.items()):
       cos = kinetix.metrics.neuron_cosine(params['head']['kernel'])
       plotting.similarity_heatmap(cos, ax=ax, title=f'head, {name}',
                                   colorbar=False)
     plotting.training_curves({k: v[1] for k, v in runs.items()}, axes[3],
                              ylabel='train loss', logy=True)
     display(fig)
     '''),
    ('md', '''
     Expect nearly the same accuracy from all three here (0.978 each after
     600 steps when we ran it): this head does not condense (mean |cos|
     about 0.09), so the collisions' cross terms are small, and the soft
     collision's self term only scales each neuron's gradient by `1 − c`,
     which AdamW's normalisation cancels. Collisions act where neurons
     condense: see `02_condensation.ipynb`.
     '''),
    ('md', '''
     ## Where next

     * `examples/nnx_mlp.py` and `examples/linen_trainstate.py`: the same
       with Flax NNX (`nnx.Optimizer`) and Linen (`TrainState`).
     * `02_condensation.ipynb`: the KO paper's condensation experiment
       (Fig. 2).
     * `03_resnet18_cifar10.ipynb`: ResNet-18 on CIFAR-10 with KO on the
       classifier.
     * Beside KO: `kinetix.cool_momentum`, `kinetix.bbi`, `kinetix.ecdsep`
       (see the README).
     '''),
]

# ---------------------------------------------------------------------------
# 02: condensation (Fig. 2)

CONDENSATION = [
    ('md', '''
     # Condensation: the KO paper's Fig. 2

     A 5-50-1 network fits 80 points of
     $y = \\sum_{k=1}^5 3.5 \\sin(5 x_k + 1)$, $x \\sim U[-4, 2]^5$, from the
     small initialisation $N(0, 0.005^2)$ that makes hidden neurons
     *condense* (their input weights become parallel or anti-parallel).
     Full-batch Adam vs Adam + soft collision vs Adam + hard collision on the
     hidden kernel, for the activations tanh and $x\\tanh x$, several seeds at
     once (`vmap`, one `lax.scan`). This is `python -m kinetix condensation`,
     driven from `kinetix.experiments.condensation`.

     The paper gives no learning rate, `coll_coef` or step count beyond
     "epoch 100"; the defaults are Adam lr 5e-4, 100 steps, `coll_coef` 0.1
     (the authors' code) and the paper's `distance_scale` κ = 1.
     '''),
    ('code', INSTALL),
    ('code', DEVICES),
    ('code', SMOKE_FLAG),
    ('code', '''
     %matplotlib inline
     import dataclasses
     import warnings

     warnings.filterwarnings('ignore', message='IProgress not found')  # tqdm

     from IPython.display import Markdown, display
     from matplotlib.figure import Figure

     import kinetix
     from kinetix import plotting
     from kinetix.experiments import condensation
     '''),
    ('code', '''
     if SMOKE:
       settings = condensation.Settings(steps=3, seeds=2, width=8)
     else:
       settings = condensation.Settings()  # 100 steps, 8 seeds, width 50
     print(settings.describe())
     print(dataclasses.asdict(settings))
     '''),
    ('code', '''
     results = condensation.run_experiment(settings)
     summary = condensation.summarize(results, settings)
     display(Markdown(condensation.markdown(summary)))
     '''),
    ('md', '''
     ## Fig. 2: the hidden neurons' cosine similarities

     Rows: optimizers; columns: activations; one seed. Beige blocks are
     neurons pointing the same way, navy blocks opposite ways; neurons are
     ordered spectrally so that condensed groups sit together.
     '''),
    ('code', '''
     display(condensation.heatmap_figure(results, settings, seed=0))
     '''),
    ('md', '''
     The same maps drawn one by one with `kinetix.plotting.similarity_heatmap`,
     next to the initialisation (computed with `kinetix.metrics.neuron_cosine`
     from `condensation.init_params`, the same init as seed 0).
     '''),
    ('code', '''
     import jax

     init = condensation.init_params(jax.random.key(0), settings)
     init_cos = kinetix.metrics.neuron_cosine(init['hidden']['kernel'])
     acts = list(results)
     methods = list(results[acts[0]])
     fig = Figure(figsize=(3.0 * (len(methods) + 1), 2.8 * len(acts)),
                  layout='constrained')
     axes = fig.subplots(len(acts), len(methods) + 1, squeeze=False)
     for r, act in enumerate(acts):
       plotting.similarity_heatmap(init_cos, ax=axes[r, 0], ticks=False,
                                   colorbar=False, title=f'{act}: init')
       for c, method in enumerate(methods, start=1):
         res = results[act][method]
         plotting.similarity_heatmap(
             res['cosine'][0], ax=axes[r, c], ticks=False,
             colorbar=c == len(methods),
             title=(f'{act}: {condensation.METHOD_LABELS[method]}\\n'
                    f"mean |cos| {res['mean_abs_cos'][0, -1]:.2f}"))
     display(fig)
     '''),
    ('md', '''
     ## Over training

     Mean off-diagonal |cos| of the hidden neurons and the loss, mean ± std
     over seeds.
     '''),
    ('code', '''
     display(condensation.curves_figure(results, settings))
     '''),
    ('md', '''
     What the README reports for the defaults (8 seeds, 100 steps): with Adam
     the tanh network is fully condensed (mean |cos| 0.99) and both collisions
     keep it more diverse (0.76 soft, 0.81 hard), as in Fig. 2; for xtanh soft
     collision does not reduce condensation at that point (0.65 vs 0.56) and
     hard does (0.46). Longer runs: `Settings(steps=2000, learning_rate=2e-3)`.
     '''),
]

# ---------------------------------------------------------------------------
# 03: ResNet-18 on CIFAR-10

RESNET = [
    ('md', '''
     # ResNet-18 on CIFAR-10 with KO on the classifier

     The KO paper's CIFAR recipe: ResNet-18 (CIFAR variant: a 3×3 stem, no
     max-pool), SGD with learning rate 0.1, momentum 0.9, weight decay 5e-4,
     cosine decay, batch 128, random crop (4-pixel padding) and horizontal
     flip; KO collides only the classifier's kernel. With kinetix that is one
     transformation, `kinetix.ko_sgd` (collision → coupled L2 → SGD, the
     order of the authors' PyTorch code), with the mask
     `kinetix.masks.by_path('head/kernel')`. The model is Flax NNX.

     In full mode the notebook downloads CIFAR-10 (tensorflow_datasets,
     else torchvision, else the raw archive from the Toronto site) and trains
     plain SGD and SGD + soft collision for `EPOCHS` epochs each. Use a GPU
     runtime; 200 epochs of ResNet-18 take hours, so lower `EPOCHS` for a
     first look. In SMOKE mode (or when CIFAR-10 cannot be downloaded) it
     uses scikit-learn's digits upsampled to 32×32×3, a ResNet-18 of width 4
     and 3 steps.
     '''),
    ('code', INSTALL),
    ('code', DEVICES),
    ('code', SMOKE_FLAG),
    ('code', '''
     %matplotlib inline
     import pathlib
     import pickle
     import tarfile
     import time
     import urllib.request

     from flax import nnx
     import jax.numpy as jnp
     import numpy as np
     import optax
     from IPython.display import display
     from matplotlib.figure import Figure

     import kinetix
     from kinetix import plotting
     '''),
    ('md', '''
     ## Data

     Images as `uint8` arrays `(N, 32, 32, 3)` and integer labels.
     '''),
    ('code', '''
     CIFAR_URL = 'https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz'
     DATA_DIR = pathlib.Path('~/.cache/kinetix/cifar10').expanduser()


     def _from_tfds():
       import tensorflow_datasets as tfds
       splits = tfds.as_numpy(tfds.load('cifar10', batch_size=-1,
                                        as_supervised=True,
                                        data_dir=str(DATA_DIR / 'tfds')))
       return tuple(a for split in ('train', 'test') for a in splits[split])


     def _from_torchvision():
       import torchvision
       out = []
       for train in (True, False):
         ds = torchvision.datasets.CIFAR10(str(DATA_DIR / 'torchvision'),
                                           train=train, download=True)
         out += [np.asarray(ds.data), np.asarray(ds.targets)]
       return tuple(out)


     def _from_archive():
       DATA_DIR.mkdir(parents=True, exist_ok=True)
       archive = DATA_DIR / 'cifar-10-python.tar.gz'
       if not archive.exists():
         urllib.request.urlretrieve(CIFAR_URL, archive)

       def batches(tar, names):
         xs, ys = [], []
         for name in names:
           d = pickle.load(tar.extractfile(f'cifar-10-batches-py/{name}'),
                           encoding='bytes')
           xs.append(d[b'data'].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
           ys.append(np.asarray(d[b'labels']))
         return np.concatenate(xs), np.concatenate(ys)

       with tarfile.open(archive) as tar:
         train = batches(tar, [f'data_batch_{i}' for i in range(1, 6)])
         test = batches(tar, ['test_batch'])
       return train + test


     def load_cifar10():
       for loader in (_from_tfds, _from_torchvision, _from_archive):
         try:
           return loader()
         except Exception as e:  # pylint: disable=broad-except
           print(f'{loader.__name__}: {type(e).__name__}: {e}')
       return None


     def digits_as_images():
       """scikit-learn's 8×8 digits, upsampled to 32×32 and tiled to RGB."""
       from sklearn import datasets
       xs, ys = datasets.load_digits(return_X_y=True)
       img = (xs.reshape(-1, 8, 8) * (255 / 16)).astype(np.uint8)
       img = np.repeat(np.repeat(img, 4, axis=1), 4, axis=2)
       img = np.repeat(img[..., None], 3, axis=-1)
       return img[:1400], ys[:1400], img[1400:], ys[1400:]


     data = None if SMOKE else load_cifar10()
     if data is None:
       if not SMOKE:
         print('CIFAR-10 could not be loaded: switching to SMOKE mode.')
       SMOKE = True
       data = digits_as_images()
     x_train, y_train, x_test, y_test = data
     y_train, y_test = y_train.astype(np.int32), y_test.astype(np.int32)
     print('train', x_train.shape, 'test', x_test.shape)
     '''),
    ('code', '''
     # Per-channel standardisation with the training set's statistics.
     MEAN = x_train.reshape(-1, 3).mean(0) / 255
     STD = x_train.reshape(-1, 3).std(0) / 255 + 1e-6


     def normalize(images):
       return ((images.astype(np.float32) / 255 - MEAN) / STD).astype(
           np.float32)


     def augment(images, key):
       """Random 32×32 crop of the 4-pixel zero-padded image, random flip."""
       n = images.shape[0]
       k_crop, k_flip = jax.random.split(key)
       padded = jnp.pad(images, ((0, 0), (4, 4), (4, 4), (0, 0)))
       offsets = jax.random.randint(k_crop, (n, 2), 0, 9)
       crops = jax.vmap(lambda img, o: jax.lax.dynamic_slice(
           img, (o[0], o[1], 0), (32, 32, images.shape[-1])))(padded, offsets)
       flip = jax.random.bernoulli(k_flip, 0.5, (n, 1, 1, 1))
       return jnp.where(flip, crops[:, :, ::-1], crops)
     '''),
    ('md', '''
     ## ResNet-18, CIFAR variant

     A 3×3 stem convolution (stride 1, no max-pool), four stages of two
     basic blocks with `width·(1, 2, 4, 8)` channels (`width = 64` is the
     standard ResNet-18, 11.2 M parameters), global average pooling and the
     classifier `head`, the only layer KO collides.
     '''),
    ('code', '''
     class BasicBlock(nnx.Module):

       def __init__(self, cin, cout, stride, *, rngs):
         conv = lambda i, o, k, s: nnx.Conv(i, o, (k, k), (s, s),
                                            use_bias=False, rngs=rngs)
         bn = lambda c: nnx.BatchNorm(c, momentum=0.9, rngs=rngs)
         self.conv1, self.bn1 = conv(cin, cout, 3, stride), bn(cout)
         self.conv2, self.bn2 = conv(cout, cout, 3, 1), bn(cout)
         self.project = stride != 1 or cin != cout  # 1×1 conv shortcut
         if self.project:
           self.shortcut = conv(cin, cout, 1, stride)
           self.shortcut_bn = bn(cout)

       def __call__(self, x):
         y = nnx.relu(self.bn1(self.conv1(x)))
         y = self.bn2(self.conv2(y))
         if self.project:
           x = self.shortcut_bn(self.shortcut(x))
         return nnx.relu(x + y)


     class ResNet18(nnx.Module):

       def __init__(self, num_classes=10, width=64, *, rngs):
         self.stem = nnx.Conv(3, width, (3, 3), use_bias=False, rngs=rngs)
         self.stem_bn = nnx.BatchNorm(width, momentum=0.9, rngs=rngs)
         blocks, cin = [], width
         for i, stride in enumerate((1, 2, 2, 2)):
           cout = width * 2 ** i
           blocks += [BasicBlock(cin, cout, stride, rngs=rngs),
                      BasicBlock(cout, cout, 1, rngs=rngs)]
           cin = cout
         self.blocks = nnx.List(blocks)
         self.head = nnx.Linear(cin, num_classes, rngs=rngs)

       def __call__(self, x):
         x = nnx.relu(self.stem_bn(self.stem(x)))
         for block in self.blocks:
           x = block(x)
         return self.head(jnp.mean(x, axis=(1, 2)))
     '''),
    ('md', '''
     ## Training

     `kinetix.ko_sgd(schedule, momentum=0.9, weight_decay=5e-4,
     collision=..., mask=by_path('head/kernel'))` with
     `optax.cosine_decay_schedule(0.1, total_steps)`; `collision='none'` is
     the plain SGD baseline. For the hard collision pass
     `collision='hard'` (and e.g. `collision_options={'distance_scale': 0.05}`,
     the authors' κ).
     '''),
    ('code', '''
     HEAD = kinetix.masks.by_path('head/kernel')

     if SMOKE:
       WIDTH, EPOCHS, BATCH, MAX_STEPS = 4, 1, 32, 3
       RUNS = ('soft',)
     else:
       WIDTH, EPOCHS, BATCH, MAX_STEPS = 64, 200, 128, None
       RUNS = ('none', 'soft')  # SGD baseline, then KO (soft collision)
     STEPS_PER_EPOCH = len(x_train) // BATCH  # drops the last partial batch
     TOTAL_STEPS = EPOCHS * STEPS_PER_EPOCH
     if MAX_STEPS is not None:
       TOTAL_STEPS = min(TOTAL_STEPS, MAX_STEPS)
     print(f'{RUNS}: width {WIDTH}, {EPOCHS} epochs, batch {BATCH}, '
           f'{TOTAL_STEPS} steps each')


     def make_optimizer(collision):
       schedule = optax.cosine_decay_schedule(0.1, TOTAL_STEPS)
       return kinetix.ko_sgd(schedule, momentum=0.9, weight_decay=5e-4,
                             collision=collision, mask=HEAD)


     def loss_fn(model, images, labels):
       logits = model(images)
       loss = optax.softmax_cross_entropy_with_integer_labels(logits,
                                                              labels).mean()
       return loss, logits


     @nnx.jit
     def train_step(model, optimizer, images, labels, key):
       images = augment(images, key)
       grad_fn = nnx.value_and_grad(loss_fn, has_aux=True)
       (loss, logits), grads = grad_fn(model, images, labels)
       optimizer.update(model, grads)
       return loss, jnp.mean(jnp.argmax(logits, -1) == labels)


     @nnx.jit
     def predict(model, images):
       return jnp.argmax(model(images), -1)


     def evaluate(model, batch=1000):
       model.eval()  # BatchNorm: running statistics
       correct = 0
       for i in range(0, len(x_test), batch):
         pred = predict(model, normalize(x_test[i:i + batch]))
         correct += int(jnp.sum(pred == y_test[i:i + batch]))
       model.train()
       return correct / len(x_test)
     '''),
    ('code', '''
     def train(collision, seed=0):
       model = ResNet18(width=WIDTH, rngs=nnx.Rngs(seed))
       optimizer = nnx.Optimizer(model, make_optimizer(collision),
                                 wrt=nnx.Param)
       rng = np.random.default_rng(seed)
       key = jax.random.key(seed)
       history = {'loss': [], 'test_accuracy': []}
       step, start = 0, time.perf_counter()
       for epoch in range(EPOCHS):
         order = rng.permutation(len(x_train))
         for b in range(STEPS_PER_EPOCH):
           if step == TOTAL_STEPS:
             break
           idx = order[b * BATCH:(b + 1) * BATCH]
           key, sub = jax.random.split(key)
           loss, _ = train_step(model, optimizer, normalize(x_train[idx]),
                                y_train[idx], sub)
           history['loss'].append(loss)
           step += 1
         acc = evaluate(model)
         history['test_accuracy'].append(acc)
         loss = float(np.mean(jax.device_get(history['loss'][-50:])))
         print(f'[{collision}] epoch {epoch + 1}/{EPOCHS}: loss {loss:.4f}, '
               f'test accuracy {acc:.4f} ({time.perf_counter() - start:.0f} s)')
       history['loss'] = np.asarray(jax.device_get(history['loss']))
       return model, optimizer, history


     results = {}
     for collision in RUNS:
       results[collision] = train(collision)
     '''),
    ('md', '''
     ## Results

     Test accuracy and the condensation of the classifier (max / mean |cos|
     between its 10 class neurons), then the head's similarity heat maps and
     the training loss.
     '''),
    ('code', '''
     for collision, (model, optimizer, history) in results.items():
       params = nnx.state(model, nnx.Param)
       cond = kinetix.metrics.condensation(params, HEAD)
       (head_stats,) = cond.values()
       print(f"{collision:>5}: test accuracy {history['test_accuracy'][-1]:.4f}"
             f", head max |cos| {float(head_stats['max_abs_cos']):.3f}, "
             f"mean |cos| {float(head_stats['mean_abs_cos']):.3f}")

     fig = Figure(figsize=(3.4 * (len(results) + 1), 3), layout='constrained')
     axes = fig.subplots(1, len(results) + 1)
     for ax, (collision, (model, _, _)) in zip(axes, results.items()):
       cos = kinetix.metrics.neuron_cosine(model.head.kernel[...])
       plotting.similarity_heatmap(cos, ax=ax, title=f'head, {collision}',
                                   colorbar=False)
     plotting.training_curves({c: r[2]['loss'] for c, r in results.items()},
                              axes[-1], ylabel='train loss', logy=True)
     display(fig)
     '''),
]

NOTEBOOKS = {
    '01_quickstart.ipynb': QUICKSTART,
    '02_condensation.ipynb': CONDENSATION,
    '03_resnet18_cifar10.ipynb': RESNET,
}


def main() -> None:
  for name, cells in NOTEBOOKS.items():
    nb = _notebook(cells)
    nbformat.validate(nb)
    nbformat.write(nb, HERE / name)
    print('wrote', HERE / name)


if __name__ == '__main__':
  main()
