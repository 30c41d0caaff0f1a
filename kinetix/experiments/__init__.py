"""The experiments behind ``python -m kinetix``.

Each subcommand lives in a module of this package exposing
``add_arguments(parser)`` and ``run(args) -> int``:

* :mod:`kinetix.experiments.condensation` — the KO paper's Sec. 4.1
  condensation study (5-50-1 network, tanh/xtanh, Adam vs +soft vs +hard).
* :mod:`kinetix.experiments.digits` — MLP and CNN on scikit-learn's digits,
  AdamW/SGD with and without collisions on the classifier head.
* ``kinetix.experiments.bench`` — the performance benchmark.

Modules are imported only when their subcommand runs, so ``--help`` stays
fast and matplotlib is needed only where figures are drawn.
"""
