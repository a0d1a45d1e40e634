"""The run directory: what training writes and export, inspection and interop read.

* :mod:`~n2uq_jax.runs.layout`: ``config.json`` (write, read, compare) and
  ``metrics.jsonl``;
* :mod:`~n2uq_jax.runs.checkpoints`: ``checkpoints/`` and ``best/``, the one resolver
  (``latest`` by default, ``best``, a step number), SHA-256 manifests, model-only
  restores;
* :mod:`~n2uq_jax.runs.model`: variants, their quantizer policies and models;
* :mod:`~n2uq_jax.runs.restore`: :func:`load_model` / :func:`restore_run` of a variant run
  directory.

    from n2uq_jax import runs
    model = runs.load_model('./workdir/default/w2a2')              # latest checkpoint
    best = runs.load_model('./workdir/default/w2a2', step='best')
"""

from n2uq_jax.runs import checkpoints, layout, model
from n2uq_jax.runs.restore import RestoredRun, load_model, restore_run

__all__ = ['checkpoints', 'layout', 'model', 'RestoredRun', 'load_model', 'restore_run']
