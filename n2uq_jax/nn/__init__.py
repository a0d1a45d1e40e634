"""Flax NNX layers built on :mod:`n2uq_jax.quant`: quantizer modules, quantized
conv and dense layers, RPReLU, and the per-layer quantizer policy."""

from n2uq_jax.nn.layers import QuantConv, QuantDense, RPReLU, WeightQuantizer, default_conv_init
from n2uq_jax.nn.quantizers import (
    ActivationQuantizer,
    DoReFaActivation,
    LSQActivation,
    N2UQActivation,
    PACTActivation,
    QuantizerParam,
    UniformActivation,
    make_activation_quantizer,
)
from n2uq_jax.nn.spec import (
    ACTIVATION_QUANTIZERS,
    FULL_PRECISION,
    WEIGHT_QUANTIZERS,
    QuantPolicy,
    QuantSpec,
)
