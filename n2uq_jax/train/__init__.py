"""Training: configs, optax groups and schedules, losses, sharded train step,
checkpoints, metrics and the loop behind ``train.py``.

    from n2uq_jax.train import config_lib, loop
    config = config_lib.default_config('fp,w2a2')
    summaries = loop.run(config, './workdir/default')
    model = load_model('./workdir/default/w2a2')          # eval mode, latest checkpoint

``load_model`` is :func:`n2uq_jax.runs.load_model`, named here too.
"""

from n2uq_jax.runs import load_model
from n2uq_jax.train import checkpoint, config_lib, losses, metrics, optimizer, sharding, step
from n2uq_jax.train.loop import run, train_and_evaluate

__all__ = ['checkpoint', 'config_lib', 'losses', 'metrics', 'optimizer', 'sharding', 'step',
           'run', 'train_and_evaluate', 'load_model']
