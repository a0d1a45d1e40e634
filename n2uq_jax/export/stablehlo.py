"""``model.stablehlo``: the integer JAX twin as a ``jax.export`` serialization.

The function is :meth:`IntegerModel.jax_run`'s logits (int8 x int8 -> int32
convolutions, integer or float thresholds, float32 elsewhere), lowered for
``cpu``, ``cuda`` and ``tpu`` with a symbolic batch dimension. Serving needs JAX
alone::

    exported = jax.export.deserialize(open('model.stablehlo', 'rb').read())
    logits = exported.call(images)  # (N, H, W, C) float32 -> (N, classes)

Serialization needs the ``flatbuffers`` package (pinned in ``requirements.txt``).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import export as jax_export

from n2uq_jax.export import engine

PLATFORMS = ('cpu', 'cuda', 'tpu')


def export_twin(model: engine.IntegerModel, *, image_size: int,
                platforms=PLATFORMS) -> jax_export.Exported:
  """The ``jax.export.Exported`` of ``model``'s JAX twin.

  Args:
    model: an integer engine (:meth:`IntegerModel.load`).
    image_size: image height = width.
    platforms: the lowering platforms.

  Returns:
    An ``Exported`` taking ``(batch, image_size, image_size, in_channels)`` float32
    images (``batch`` symbolic) and returning ``(batch, classes)`` float32 logits.
  """
  logits = lambda images: model.jax_function(images)[0]
  batch, = jax_export.symbolic_shape('batch')
  images = jax.ShapeDtypeStruct((batch, image_size, image_size, model.manifest['in_channels']),
                                jnp.float32)
  return jax_export.export(jax.jit(logits), platforms=tuple(platforms))(images)


def write_stablehlo(model: engine.IntegerModel, path: str, *, image_size: int,
                    platforms=PLATFORMS) -> None:
  """Writes :func:`export_twin`'s serialization to ``path``."""
  with open(path, 'wb') as f:
    f.write(export_twin(model, image_size=image_size, platforms=platforms).serialize())
