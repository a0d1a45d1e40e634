"""N2UQ for any Flax model through Qwix: :class:`N2UQRule` says which ops of
which modules are quantized, at what bits, by what method; :class:`N2UQProvider`
is the Qwix provider that applies them::

  import qwix
  from n2uq_jax.qwix import N2UQProvider, N2UQRule

  rules = [N2UQRule('.*', weight_bits=2, act_bits=2)]
  qmodel = qwix.quantize_model(model, N2UQProvider(rules), example_input)
"""

from n2uq_jax.qwix.provider import N2UQProvider
from n2uq_jax.qwix.rule import ACTIVATION_METHODS, OP_NAMES, WEIGHT_METHODS, N2UQRule
