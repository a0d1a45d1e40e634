"""One training step of each named config on mock data, in a fresh process (so that
XLA_FLAGS can trade compiled-code speed for compile time). Prints one JSON line per
config:

    python -m tests.train.smoke_run WORKDIR CACHE_DIR imagenet_resnet18[:eval] ...

Each run initialises from a random checkpoint of the config's FP twin and distils
from a random resnet18_fp teacher checkpoint, both written by this project; ``:eval``
also runs the evaluation (with the quantizer statistics).
"""

import json
import os
import sys


def main(argv):
  workdir, cache, names = argv[1], argv[2], argv[3:]
  from n2uq_jax.runs import checkpoints as checkpoint_lib  # pylint: disable=g-import-not-at-top
  from n2uq_jax.runs import model as model_lib  # pylint: disable=g-import-not-at-top
  from n2uq_jax.train import loop, metrics, step as step_lib  # pylint: disable=g-import-not-at-top
  from tests.train.mock_data import MockPipeline  # pylint: disable=g-import-not-at-top
  from tests.train.test_configs import load  # pylint: disable=g-import-not-at-top

  loop.configure_compilation_cache(cache)

  def write_fp_checkpoint(directory, name):
    model = model_lib.build_model(name, None, num_classes=10, in_channels=3, seed=1)
    _, params, model_state = step_lib.split_model(model)
    checkpoint_lib.save_model(directory, 0, params, model_state)
    return directory

  teacher = write_fp_checkpoint(os.path.join(workdir, 'teacher'), 'resnet18_fp')
  for item in names:
    name, _, option = item.partition(':')
    config = load(name)
    init = write_fp_checkpoint(os.path.join(workdir, name, 'init'), config.fp_model)
    config.update(dict(
        num_train_steps=1, global_batch_size=2, init_checkpoint=init, teacher_checkpoint=teacher,
        teacher_model='resnet18_fp', checkpoint_every_steps=1, log_every_steps=1,
        progress_bar=False, tensorboard=False, compilation_cache_dir='',
        eval_every_steps=0 if option == 'eval' else -1))
    pipeline = MockPipeline(per_host_batch_size=2, image_shape=(32, 32, 3), num_classes=10,
                            steps_per_epoch=3, num_eval_batches=1)
    run_dir = os.path.join(workdir, name, 'run')
    summary = loop.train_and_evaluate(config, run_dir, pipeline=pipeline)
    records = metrics.read_metrics(run_dir)
    print(json.dumps({
        'name': name, 'step': summary['step'],
        'eval_accuracy': summary['final_eval_accuracy'],
        'loss': next(r['loss'] for r in records if 'loss' in r),
        'checkpoint': os.path.isdir(os.path.join(run_dir, 'checkpoints', '1')),
        'quantizer_layers': len(next((r.get('quantizers', {}) for r in records
                                      if 'eval_accuracy' in r), {})),
    }), flush=True)
  return 0


if __name__ == '__main__':
  sys.exit(main(sys.argv))
