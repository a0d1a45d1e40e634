"""Stopping cleanly on a preemption notice (SIGTERM, as TPU VMs get) or Ctrl-C (SIGINT).

:class:`StopRequest` turns the first signal into a flag; the training loop asks
:meth:`StopRequest.should_stop` after every step and, when it says so, checkpoints that
step and returns. A second SIGINT interrupts at once (``KeyboardInterrupt``).

With several processes a notice may reach one host only, so the processes agree: each
step, every process contributes its flag to a max-reduction over the mesh, and the
result is read one step later (by then the device has computed it, so reading does not
stall the step pipeline). Every process reads the same reduced value at the same loop
iteration, so all of them stop after the same step.
"""

from __future__ import annotations

import signal
import threading

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class StopRequest:
  """Catches :data:`STOP_SIGNALS` between :meth:`install` and :meth:`uninstall` (or
  inside ``with``).

  Args:
    mesh: the training mesh; with more than one process the stop decision is reduced
      over it (see the module docstring).
  """

  def __init__(self, mesh: Mesh):
    self.signal_name: str | None = None
    self._previous = {}
    self._multi_process = jax.process_count() > 1
    self._in_flight = None
    if self._multi_process:
      devices = mesh.devices.reshape(-1)
      self._flag_sharding = NamedSharding(Mesh(devices, ('all',)), P('all'))
      self._local_devices = sum(d.process_index == jax.process_index() for d in devices)
      self._reduce = jax.jit(jnp.max, out_shardings=NamedSharding(
          Mesh(devices, ('all',)), P()))

  def install(self) -> None:
    """Replaces the handlers of :data:`STOP_SIGNALS` (main thread only; elsewhere the
    signals keep their handlers and a warning says so)."""
    if threading.current_thread() is not threading.main_thread():
      logging.warning('not in the main thread: SIGTERM/SIGINT will not stop training cleanly')
      return
    for sig in STOP_SIGNALS:
      self._previous[sig] = signal.signal(sig, self._handle)

  def uninstall(self) -> None:
    """Puts the previous handlers back."""
    for sig, handler in self._previous.items():
      signal.signal(sig, handler)
    self._previous = {}

  def __enter__(self) -> 'StopRequest':
    self.install()
    return self

  def __exit__(self, *exc_info) -> None:
    self.uninstall()

  def _handle(self, signum, frame) -> None:
    del frame
    if self.signal_name is not None and signum == signal.SIGINT:
      raise KeyboardInterrupt
    if self.signal_name is None:
      self.signal_name = signal.Signals(signum).name
      logging.warning('%s received: stopping after the current step', self.signal_name)

  @property
  def requested(self) -> bool:
    """Whether this process received a stop signal."""
    return self.signal_name is not None

  def should_stop(self) -> bool:
    """Call once per training step, on every process: whether to stop after this step.

    One process: this process's flag. Several: whether any process had its flag set
    one step earlier (the same answer on every process).
    """
    if not self._multi_process:
      return self.requested
    local = np.full((self._local_devices,), int(self.requested), np.int32)
    flags = jax.make_array_from_process_local_data(self._flag_sharding, local)
    previous, self._in_flight = self._in_flight, self._reduce(flags)
    if previous is None:
      return False
    return bool(np.asarray(previous.addressable_data(0)))
