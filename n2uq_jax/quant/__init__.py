"""Pure-JAX quantizers: the N2UQ activation and weight quantizers (SPEC 2, 3) and
the baselines the paper compares against. No Flax, no state: every parameter is
an explicit argument, so they compose with jit, grad, vmap, remat, scan and
shard_map.

The registry of quantizer families by name (:mod:`n2uq_jax.quant.families`) and the
argument checks (:func:`check_bits`) are public: the layers, the Qwix provider and the
configs use them.
"""

from n2uq_jax.quant.activation import (
    INTERVAL_FLOOR,
    ActivationParams,
    breakpoints,
    clamp_intervals,
    init_n2uq_activation,
    level_spacing,
    n2uq_activation,
    n2uq_activation_codes,
    num_thresholds,
    thresholds,
)
from n2uq_jax.quant.baselines import (
    dorefa_activation,
    dorefa_weight,
    lsq_levels,
    lsq_quantize,
    pact_activation,
    pact_activation_n2uq_mbv2,
    uniform_quantize,
)
from n2uq_jax.quant.signed import init_n2uq_activation_signed, n2uq_activation_signed
from n2uq_jax.quant.weight import (
    entropy_preserving_gamma,
    n2uq_weight,
    n2uq_weight_codes,
)
from n2uq_jax.quant.validation import MAX_BITS, MIN_BITS, check_bits
from n2uq_jax.quant.families import (
    ACTIVATION_FAMILIES,
    METHODS,
    WEIGHT_FAMILIES,
    Family,
    activation_family,
    weight_family,
)
