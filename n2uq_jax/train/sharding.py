"""Device mesh, shardings of the training state and of batches.

The mesh has two axes over all devices of all hosts: ``data`` (pure data
parallelism) and ``fsdp`` (data parallelism whose devices also split the large
parameters and their optimizer moments). Batches are split along their leading axis
over both axes; parameters are replicated, or with ``fsdp > 1`` the large ones are
split over ``fsdp``. Under ``jit`` with these shardings BatchNorm statistics are
means over the global batch (XLA inserts the cross-device reductions).
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

DATA = 'data'
FSDP = 'fsdp'
BATCH_AXES = (DATA, FSDP)


def create_mesh(fsdp: int = 1, devices=None) -> Mesh:
  """A ``(data, fsdp)`` mesh over ``devices`` (default: all devices of all hosts).

  Raises:
    ValueError: ``fsdp`` does not divide the device count.
  """
  devices = jax.devices() if devices is None else list(devices)
  if fsdp < 1 or len(devices) % fsdp:
    raise ValueError(f'mesh.fsdp={fsdp} must be >= 1 and divide the {len(devices)} devices')
  grid = np.asarray(devices, dtype=object).reshape(len(devices) // fsdp, fsdp)
  return Mesh(grid, (DATA, FSDP))


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Leading (batch) axis over every device of the mesh."""
  return NamedSharding(mesh, P(BATCH_AXES))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def check_batch_size(global_batch_size: int, mesh: Mesh) -> None:
  """Raises ValueError unless the global batch divides over the batch axes."""
  devices = mesh.shape[DATA] * mesh.shape[FSDP]
  if global_batch_size % devices:
    raise ValueError(
        f'global_batch_size={global_batch_size} does not divide over the {devices} devices of '
        f'the mesh (data={mesh.shape[DATA]} x fsdp={mesh.shape[FSDP]}); use a multiple of '
        f'{devices}')
  if global_batch_size % jax.process_count():
    raise ValueError(f'global_batch_size={global_batch_size} does not divide over the '
                     f'{jax.process_count()} processes (hosts); use a multiple of '
                     f'{jax.process_count() * devices // np.gcd(jax.process_count(), devices)}')


def array_sharding(shape: tuple[int, ...], mesh: Mesh, *, min_size: int = 2 ** 18) -> NamedSharding:
  """Sharding of one parameter (or optimizer moment) of ``shape``.

  Replicated unless ``fsdp > 1`` and the array has at least ``min_size`` elements;
  then its last axis divisible by ``fsdp`` (the output channels of HWIO kernels first)
  is split over ``fsdp``.
  """
  fsdp = mesh.shape[FSDP]
  if fsdp == 1 or int(np.prod(shape, dtype=np.int64)) < min_size:
    return replicated(mesh)
  for axis in reversed(range(len(shape))):
    if shape[axis] % fsdp == 0:
      spec = [None] * len(shape)
      spec[axis] = FSDP
      return NamedSharding(mesh, P(*spec))
  return replicated(mesh)


def tree_shardings(tree: Any, mesh: Mesh, *, min_size: int = 2 ** 18) -> Any:
  """Shardings of every array leaf of ``tree`` (arrays or ShapeDtypeStructs)."""
  return jax.tree.map(lambda x: array_sharding(tuple(np.shape(x)), mesh, min_size=min_size), tree)


def global_batch(local_batch: dict[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
  """This host's batch as global arrays split over the mesh's batch axes
  (``jax.make_array_from_process_local_data``)."""
  sharding = batch_sharding(mesh)
  return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v))
          for k, v in local_batch.items()}
