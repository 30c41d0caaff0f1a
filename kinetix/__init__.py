"""kinetix: physics-inspired optimizers for JAX and Optax.

The public API is re-exported here explicitly; everything else is private.
"""

__version__ = '0.1.0'

# -- public re-exports (one line per module; keep sorted by module) --
