"""Several processes (hosts) in one run: start-up and the barriers that keep them in step.

Why starts failed on a loaded machine: on CPU, collectives go through Gloo, whose
communicator is set up at the first collective each process executes. Setting it up
reads the other processes' keys from the coordination service with a fixed one-minute
timeout (``GetKeyValue() timed out``), and a Gloo collective itself waits 30 s. A process
that reaches its first collective much later than another (it compiled the train step
more slowly, or it was simply scheduled less on shared cores) makes the early one time
out. The cure is to meet at a barrier of the coordination service, whose timeout is
ours to choose, after every compilation and before the first execution
(:func:`barrier`, :class:`SyncedJit`), and to make orbax use the same kind of barrier
instead of a collective. On TPU and GPU the same barriers are cheap and harmless.

A barrier that times out raises :class:`DistributedError` naming the process that
raises it and the barrier, and the coordination service's message names the
processes that did not arrive.
"""

from __future__ import annotations

import itertools
from typing import Any, Callable

import jax
from absl import flags, logging

_INITIALIZED = False
_BARRIER_TIMEOUT_S = 600
_barrier_ids = itertools.count()


class DistributedError(RuntimeError):
  """A process did not arrive where the others waited for it."""


def initialize(dist) -> None:
  """``jax.distributed.initialize`` from the ``config.distributed`` fields (once,
  before any other JAX call); nothing unless ``dist.enabled``.

  Empty/negative ``coordinator_address``, ``num_processes`` and ``process_id`` are
  left to JAX's auto-detection (Cloud TPU, SLURM, ...). ``initialization_timeout``
  (s) bounds the wait for every process to connect; ``barrier_timeout`` (s) bounds
  each later barrier (compilations included, so be generous).

  Raises:
    DistributedError: not every process connected in time.
  """
  global _INITIALIZED, _BARRIER_TIMEOUT_S
  if not dist.enabled or _INITIALIZED:
    return
  _BARRIER_TIMEOUT_S = int(dist.get('barrier_timeout', _BARRIER_TIMEOUT_S))
  process_id = dist.process_id if dist.process_id >= 0 else None
  try:
    jax.distributed.initialize(
        coordinator_address=dist.coordinator_address or None,
        num_processes=dist.num_processes if dist.num_processes > 0 else None,
        process_id=process_id,
        initialization_timeout=int(dist.get('initialization_timeout', 300)))
  except Exception as error:  # pylint: disable=broad-except
    raise DistributedError(
        f'process {process_id if process_id is not None else "(auto)"}: jax.distributed.'
        f'initialize with coordinator {dist.coordinator_address or "(auto)"} failed: {error}. '
        'Every process must start within distributed.initialization_timeout='
        f'{dist.get("initialization_timeout", 300)} s of the first, with the same '
        'coordinator_address and num_processes and its own process_id') from error
  _INITIALIZED = True
  _use_barriers_in_orbax()
  barrier('n2uq_started')


def _use_barriers_in_orbax() -> None:
  """Makes orbax synchronise processes with coordination-service barriers instead of a
  collective (which on CPU would be a Gloo all-reduce with a 30 s wait)."""
  name = 'experimental_orbax_use_distributed_barrier'
  if name in flags.FLAGS:
    if not flags.FLAGS.is_parsed():
      flags.FLAGS.mark_as_parsed()
    flags.FLAGS[name].value = True


def barrier(name: str, timeout_s: int | None = None) -> None:
  """Waits until every process has called ``barrier`` with this ``name`` (a no-op with
  one process). Names are made unique per call, so a loop may reuse one.

  Raises:
    DistributedError: some process did not arrive within ``timeout_s`` (default:
      ``distributed.barrier_timeout``).
  """
  if jax.process_count() == 1:
    return
  from jax._src import distributed as jax_distributed  # pylint: disable=g-import-not-at-top
  timeout_s = timeout_s or _BARRIER_TIMEOUT_S
  key = f'{name}_{next(_barrier_ids)}'
  try:
    jax_distributed.global_state.client.wait_at_barrier(key, timeout_in_ms=timeout_s * 1000)
  except Exception as error:  # pylint: disable=broad-except
    raise DistributedError(
        f'process {jax.process_index()} of {jax.process_count()} waited {timeout_s} s at '
        f'barrier {key!r} and not every process arrived (one crashed, hangs, or is much '
        f'slower; see its log): {error}') from error
  logging.debug('passed barrier %s', key)


class SyncedJit:
  """A jitted function whose first call compiles it, waits at a :func:`barrier` until
  every process has compiled it, then runs; later calls run the compiled program.
  Every call must have the shapes and shardings of the first.

  Args:
    fn: a ``jax.jit``-wrapped function.
    name: names the barrier.
  """

  def __init__(self, fn: Callable, name: str):
    self._fn = fn
    self._name = name
    self._compiled = None

  def compile(self, *args) -> Any:
    if self._compiled is None:
      self._compiled = self._fn.lower(*args).compile()
      barrier(f'compiled_{self._name}')
    return self._compiled

  def __call__(self, *args):
    return self.compile(*args)(*args)
