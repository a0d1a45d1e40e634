"""How the examples of an epoch are divided between the processes (hosts) of a run.

Training (drop remainder): every epoch is one global permutation of the N training
examples, the same on all hosts. Host h of P takes the permuted positions
h, h + P, h + 2P, ... and stops after steps_per_epoch x B of them, B being the per-host
batch. Hosts therefore see disjoint shares of every epoch, equally many batches each, and
the global batch of step t (per-host batches stacked in host order) holds the positions
P t B ... P (t + 1) B - 1. The N - steps_per_epoch x B x P positions left over are
dropped; they are different examples in each epoch.

Evaluation (nothing dropped): host h takes examples h, h + P, ... of the eval split, so
every example belongs to exactly one host, and pads its share to the same number of
batches as every other host, so that collectives over hosts line up.
"""

from __future__ import annotations


def check_process(process_index: int, process_count: int) -> None:
  """Raises ValueError unless 0 <= process_index < process_count."""
  if process_count < 1 or not 0 <= process_index < process_count:
    raise ValueError(
        f"process_index {process_index} must lie in [0, process_count) with "
        f"process_count >= 1, got process_count {process_count}"
    )


def train_steps_per_epoch(num_examples: int, per_host_batch_size: int, process_count: int) -> int:
  """Global training steps per epoch: floor(N / (B x P)).

  Raises:
    ValueError: if one global batch needs more examples than the split has.
  """
  global_batch = per_host_batch_size * process_count
  steps = num_examples // global_batch
  if steps == 0:
    raise ValueError(
        f"the global batch {per_host_batch_size} x {process_count} processes = "
        f"{global_batch} exceeds the {num_examples} training examples; use a per-host "
        f"batch size of at most {num_examples // process_count}"
    )
  return steps


def host_train_positions(
    process_index: int, process_count: int, steps_per_epoch: int, per_host_batch_size: int
) -> slice:
  """The positions of one permuted epoch that this host trains on (module docstring)."""
  stop = steps_per_epoch * per_host_batch_size * process_count
  return slice(process_index, stop, process_count)


def host_eval_indices(num_examples: int, process_index: int, process_count: int) -> range:
  """The eval examples of this host: process_index, process_index + P, ..."""
  return range(process_index, num_examples, process_count)


def eval_batches_per_host(num_examples: int, per_host_batch_size: int, process_count: int) -> int:
  """Batches every host yields in one eval pass: ceil(ceil(N / P) / B)."""
  largest_share = -(-num_examples // process_count)
  return -(-largest_share // per_host_batch_size)
