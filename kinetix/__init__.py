"""kinetix: physics-inspired optimizers for JAX and Optax.

The public API is re-exported here explicitly; everything else is private.
"""

__version__ = '0.2.0.dev0'

# -- public re-exports (one line per module; keep sorted by module) --
from kinetix import kinetic
from kinetix import masks
from kinetix import metrics  # (plotting is optional: import kinetix.plotting)
from kinetix.aliases import ko_adamw
from kinetix.aliases import ko_sgd
from kinetix.annealing import CoolMomentumState
from kinetix.annealing import cool_momentum
from kinetix.hamiltonian import BBIState
from kinetix.hamiltonian import ECDSepState
from kinetix.hamiltonian import bbi
from kinetix.hamiltonian import ecdsep
from kinetix.kinetic import HardCollisionState
from kinetix.kinetic import SoftCollisionState
from kinetix.kinetic import hard_collision
from kinetix.kinetic import soft_collision

__all__ = (
    'BBIState',
    'CoolMomentumState',
    'ECDSepState',
    'HardCollisionState',
    'SoftCollisionState',
    '__version__',
    'bbi',
    'cool_momentum',
    'ecdsep',
    'hard_collision',
    'kinetic',
    'ko_adamw',
    'ko_sgd',
    'masks',
    'metrics',
    'soft_collision',
)
