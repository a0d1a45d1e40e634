"""Records the train step that ``loop.train_and_evaluate`` lowers and compiles:
the element types of every convolution in its StableHLO, and the shardings of the
training state it takes. Used in-process, and as a subprocess (with XLA_FLAGS set
before JAX starts, for several simulated devices)::

    python -m tests.train.lowered_step OUT.json WORKDIR [--fsdp F] [--compute-dtype D]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import re
import sys

import jax

_CONVOLUTION = re.compile(r'stablehlo\.convolution.*?:\s*\((.*)\)\s*->\s*(tensor<[^>]*>)')
_ELEMENT_TYPE = re.compile(r'tensor<(?:[0-9?]+x)*([a-z0-9]+)>')


def convolution_types(stablehlo: str) -> list[list[str]]:
  """Per ``stablehlo.convolution``: the element types of its operands and result."""
  found = []
  for line in stablehlo.splitlines():
    match = _CONVOLUTION.search(line)
    if match:
      found.append(_ELEMENT_TYPE.findall(match.group(1)) + _ELEMENT_TYPE.findall(match.group(2)))
  return found


@contextlib.contextmanager
def capture_compiles():
  """Yields a list that receives ``(lowered, compiled)`` for every
  ``Lowered.compile()`` call (the loop compiles each of its steps that way, so that
  several processes can meet at a barrier after compiling)."""
  captured = []
  original = jax.stages.Lowered.compile

  def compile_and_record(self, *args, **kwargs):
    compiled = original(self, *args, **kwargs)
    captured.append((self, compiled))
    return compiled

  jax.stages.Lowered.compile = compile_and_record
  try:
    yield captured
  finally:
    jax.stages.Lowered.compile = original


def run_one_step(workdir: str, *, fsdp: int = 1, compute_dtype: str = 'float32',
                 async_checkpointing: bool = True) -> dict:
  """One step of the W2A2 small CNN on mock data; returns ``convolutions`` (see
  :func:`convolution_types`), ``params`` and ``opt_state`` (``{path: partition spec}``
  of the state the step takes), ``mesh`` (axis sizes) and the loop's summary."""
  from n2uq_jax.train import config_lib, loop  # pylint: disable=g-import-not-at-top
  from tests.train.mock_data import MockPipeline  # pylint: disable=g-import-not-at-top

  config = config_lib.default_config('w2a2')
  config.update(dict(loss='ce', num_train_steps=1, global_batch_size=16, progress_bar=False,
                     tensorboard=False, compilation_cache_dir='', checkpoint_every_steps=1,
                     eval_every_steps=1, compute_dtype=compute_dtype,
                     async_checkpointing=async_checkpointing))
  config.mesh.fsdp = fsdp
  config.mesh.fsdp_min_size = 256
  pipeline = MockPipeline(per_host_batch_size=16, image_shape=(8, 8, 1), num_classes=10)
  with capture_compiles() as captured:
    summary = loop.train_and_evaluate(config, workdir, pipeline=pipeline)
  # The train step is the compile whose first argument is the training state (the
  # evaluation and quantizer-statistics steps take parameters alone).
  train_steps = [(l, c) for l, c in captured if hasattr(l.args_info[0][0], 'opt_state')]
  assert len(train_steps) == 1, f'expected one train step among {len(captured)} compiles'
  lowered, compiled = train_steps[0]
  state_shardings = compiled.input_shardings[0][0]
  state_args = lowered.args_info[0][0]

  def leaves(shardings, args):
    """``{path: [shape, partition spec]}``."""
    return {jax.tree_util.keystr(path): [list(arg.shape), [
        list(a) if isinstance(a, tuple) else a for a in sharding.spec]]
            for (path, sharding), arg in zip(jax.tree_util.tree_leaves_with_path(shardings),
                                             jax.tree.leaves(args))}

  mesh = jax.tree.leaves(state_shardings.params)[0].mesh
  return {'convolutions': convolution_types(lowered.as_text()),
          'params': leaves(state_shardings.params, state_args.params),
          'opt_state': leaves(state_shardings.opt_state, state_args.opt_state),
          'mesh': dict(mesh.shape), 'devices': jax.device_count(), 'summary': summary}


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument('out')
  parser.add_argument('workdir')
  parser.add_argument('--fsdp', type=int, default=1)
  parser.add_argument('--compute-dtype', default='float32')
  args = parser.parse_args()
  result = run_one_step(args.workdir, fsdp=args.fsdp, compute_dtype=args.compute_dtype)
  with open(args.out, 'w') as f:
    json.dump(result, f)
  return 0


if __name__ == '__main__':
  sys.exit(main())
