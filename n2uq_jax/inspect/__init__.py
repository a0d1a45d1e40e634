"""Inspection of a trained run: learned thresholds over the inputs they cut, level
occupancy and its entropy, training curves, bits, model size and bit-operations.

    python -m n2uq_jax.inspect workdir/default/w2a2 --out inspect/w2a2

or, from Python, ``n2uq_jax.inspect.inspect_run(run_dir, out_dir)``. See
:mod:`n2uq_jax.inspect.report` for the outputs.
"""

from n2uq_jax.inspect.report import format_summary, inspect_run

__all__ = ['format_summary', 'inspect_run']
