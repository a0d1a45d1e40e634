"""One session of a run of the full-precision small CNN on the embedded digits, on the
devices that XLA_FLAGS gives it, for tests/train/test_mesh_resume.py:

    python -m tests.train.mesh_resume_run WORKDIR OUT.npz [--fsdp F] [--steps 6]
        [--stop-after N] [--cache DIR]

Trains (or resumes) WORKDIR through ``n2uq_jax.train.train_and_evaluate`` over a mesh
of every device with ``mesh.fsdp=F`` (small tensors sharded too), then writes OUT.npz:
the latest checkpoint's model state as ``n2uq_jax.train.load_model`` restores it (by
dotted path), ``__loss_<step>`` for each logged step of the run so far, ``__devices``
and ``__step``.

Full precision, as in tests/train/sharded_run.py (whose module note says why the
quantized model does not agree across device counts to float tolerance).
"""

import argparse
import sys


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument('workdir')
  parser.add_argument('out')
  parser.add_argument('--fsdp', type=int, default=1)
  parser.add_argument('--steps', type=int, default=6)
  parser.add_argument('--stop-after', type=int, default=0)
  parser.add_argument('--cache', default='')
  args = parser.parse_args()

  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from flax import nnx  # pylint: disable=g-import-not-at-top
  from n2uq_jax import train  # pylint: disable=g-import-not-at-top

  config = train.config_lib.default_config('fp')
  config.update(dict(
      loss='ce', fp_loss='ce', num_train_steps=args.steps, global_batch_size=16,
      learning_rate=0.01, schedule='constant', warmup_epochs=0.0, progress_bar=False,
      tensorboard=False, compilation_cache_dir='', checkpoint_every_steps=3,
      eval_every_steps=-1, log_every_steps=1))
  config.mesh.fsdp = args.fsdp
  config.mesh.fsdp_min_size = 256  # shard the conv kernels and the classifier too
  if args.cache:
    jax.config.update('jax_compilation_cache_dir', args.cache)
  summary = train.train_and_evaluate(config, args.workdir,
                                     stop_after_step=args.stop_after or None)
  model = train.load_model(args.workdir)
  state = {'.'.join(str(k) for k in path): np.asarray(value)
           for path, value in nnx.to_flat_state(nnx.state(model))}
  losses = {f'__loss_{r["step"]}': np.float64(r['loss'])
            for r in train.metrics.read_metrics(args.workdir) if 'loss' in r}
  np.savez(args.out, **state, **losses, __devices=np.int64(jax.device_count()),
           __step=np.int64(summary['step']))
  return 0


if __name__ == '__main__':
  sys.exit(main())
