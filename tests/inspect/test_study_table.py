"""``bench/study_table.py`` reads the study's tables from real run directories: the
embedded default's FP run, then W2A2 N2UQ (quantizer lr x 1) and the fixed-uniform
control at two seeds each, laid out as ``bench/cifar10_study.sh`` lays out its grid."""

import importlib.util
import json
import math
import pathlib
import shutil

import numpy as np
import pytest

from n2uq_jax.train import config_lib, loop, metrics

_SCRIPT = pathlib.Path(__file__).resolve().parents[2] / 'bench' / 'study_table.py'
SEEDS = (0, 1)
CONFIGS = {'w2a2_n2uq_qlr1': ('n2uq', 1.0), 'w2a2_uniform': ('uniform', None)}
WARMUP_EPOCHS = 0.5
EPOCHS = 2


@pytest.fixture(scope='module')
def study_table():
  spec = importlib.util.spec_from_file_location('study_table', _SCRIPT)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


@pytest.fixture(scope='module')
def grid(default_run, tmp_path_factory, compilation_cache):
  """RUN_ROOT with fp/fp (the default run's FP variant) and seed<S>/<config>/w2a2 for
  both configurations at both seeds: two epochs of the digits, cosine with a warmup."""
  workdir, _ = default_run
  root = tmp_path_factory.mktemp('grid')
  shutil.copytree(workdir / 'fp', root / 'fp' / 'fp')
  for seed in SEEDS:
    for name, (method, multiplier) in CONFIGS.items():
      config = config_lib.default_config(f'w2a2,{method}')
      config.update(dict(num_epochs=EPOCHS, warmup_epochs=WARMUP_EPOCHS, seed=seed,
                         global_batch_size=256, log_every_steps=2, progress_bar=False,
                         tensorboard=False, compilation_cache_dir=compilation_cache,
                         init_checkpoint=str(root / 'fp' / 'fp'),
                         teacher_checkpoint=str(root / 'fp' / 'fp')))
      if multiplier is not None:
        config.quantizer_lr_multiplier = multiplier
      loop.run(config, str(root / f'seed{seed}' / name))
  return root


@pytest.fixture(scope='module')
def report(grid, study_table):
  return study_table.report(str(grid))


def _variant_dir(root, seed, name):
  """The run's one variant directory (``w2a2`` for N2UQ, ``w2a2_<method>`` otherwise)."""
  (variant_dir,) = [d for d in (root / f'seed{seed}' / name).iterdir()
                    if (d / 'metrics.jsonl').is_file()]
  return variant_dir


def _final(root, seed, name):
  return [r for r in metrics.read_metrics(str(_variant_dir(root, seed, name)))
          if r.get('summary')][-1]


def _section(report, title):
  return report.split(f'### {title}')[1].split('###')[0]


def _row(section, first_cell):
  rows = [line for line in section.splitlines() if line.startswith(f'| {first_cell} |')]
  assert len(rows) == 1, section
  return [cell.strip() for cell in rows[0].strip('|').split('|')]


def test_mean_std_and_per_seed_values(grid, study_table, capsys):
  assert study_table.main([str(grid)]) == 0
  section = _section(capsys.readouterr().out, 'Final held-out top-1 per configuration')
  for name, key in (('w2a2_n2uq_qlr1', ('n2uq', 1.0)), ('w2a2_uniform', ('uniform', 0.1))):
    values = [_final(grid, s, name)['final_eval_accuracy'] for s in SEEDS]
    mean = sum(values) / 2
    sample_std = math.sqrt(sum((v - mean) ** 2 for v in values) / (2 - 1))
    assert _row(section, study_table.label(key)) == [
        study_table.label(key), '2', f'{100 * mean:.2f}', f'{100 * sample_std:.2f}',
        f'0: {100 * values[0]:.2f}, 1: {100 * values[1]:.2f}']


def test_paired_difference_and_t_interval(grid, report):
  diffs = [_final(grid, s, 'w2a2_n2uq_qlr1')['final_eval_accuracy']
           - _final(grid, s, 'w2a2_uniform')['final_eval_accuracy'] for s in SEEDS]
  mean = (diffs[0] + diffs[1]) / 2
  # Two pairs: 1 degree of freedom, Student's t is Cauchy, t_0.975 = tan(0.475 pi);
  # s / sqrt(2) = |d0 - d1| / 2.
  half = math.tan(0.475 * math.pi) * abs(diffs[0] - diffs[1]) / 2
  row = _row(_section(report, 'Paired difference'), 'quantizer lr x 1')
  assert row == ['quantizer lr x 1', '2',
                 f'0: {100 * diffs[0]:+.2f}, 1: {100 * diffs[1]:+.2f}', f'{100 * mean:+.2f}',
                 f'[{100 * (mean - half):+.2f}, {100 * (mean + half):+.2f}]']


@pytest.mark.parametrize('values, t', [
    # df 2 in closed form: t_p = (2p - 1) / sqrt(2 p (1 - p)).
    ((1.0, 2.0, 4.0), 0.95 / math.sqrt(2 * 0.975 * 0.025)),
    # df 5: the printed tables' 2.571 (2.570582 to seven digits).
    ((0.5, -0.25, 0.0, 1.5, 2.0, 1.0), 2.570582),
])
def test_t_interval_against_known_quantiles(study_table, values, t):
  mean, low, high = study_table.t_interval(values)
  half = t * np.std(values, ddof=1) / np.sqrt(len(values))
  np.testing.assert_allclose([low, high], [np.mean(values) - half, np.mean(values) + half],
                             rtol=1e-6)
  assert mean == pytest.approx(np.mean(values), rel=1e-12)


def test_drift_budget_is_the_sum_of_the_quantizer_schedule(grid, study_table, report):
  for name, (_, multiplier) in CONFIGS.items():
    variant_dir = _variant_dir(grid, 0, name)
    total = _final(grid, 0, name)['total_steps']
    config = json.loads((variant_dir / 'config.json').read_text())
    steps_per_epoch = total // EPOCHS
    warmup = round(WARMUP_EPOCHS * steps_per_epoch)
    t = np.arange(total, dtype=np.float64)
    lr0 = config['learning_rate']
    rates = np.where(t < warmup, lr0 * t / warmup,
                     lr0 * 0.5 * (1 + np.cos(np.pi * (t - warmup) / (total - warmup))))
    expected = (multiplier or 0.1) * rates.sum()
    assert study_table.drift_budget(str(variant_dir), total) == pytest.approx(expected, rel=1e-6)
    if multiplier:
      row = _row(_section(report, 'Drift budget'), study_table.label(('n2uq', 1.0)))
      assert row[1:3] == [str(total), f'{expected:.4g}']
    else:  # the fixed control learns no quantizer parameter: no budget, no multiplier
      row = _row(_section(report, 'Drift budget'), 'fixed uniform [0, 2] + N2UQ weights')
      assert row[1:3] == [str(total), 'none (nothing learned)']


def test_threshold_movement_matches_the_logged_thresholds(grid, study_table):
  variant_dir = _variant_dir(grid, 1, 'w2a2_n2uq_qlr1')
  last_eval = [r for r in metrics.read_metrics(str(variant_dir)) if 'quantizers' in r][-1]
  logged = {layer: max(abs(t - t0) for t, t0 in zip(q['thresholds'], (1 / 3, 1, 5 / 3)))
            for layer, q in last_eval['quantizers'].items()}
  movement = study_table.threshold_movement(str(variant_dir))
  assert sorted(movement) == sorted(logged) and max(logged.values()) > 0
  for layer, value in logged.items():
    assert movement[layer] == pytest.approx(value, abs=2e-6)
  assert study_table.threshold_movement(str(_variant_dir(grid, 1, 'w2a2_uniform'))) == {}


def test_curves_are_the_mean_over_seeds_per_epoch(grid, study_table, report):
  section = _section(report, 'Held-out top-1 by epoch')
  for name, key in (('w2a2_n2uq_qlr1', ('n2uq', 1.0)), ('w2a2_uniform', ('uniform', 0.1))):
    by_epoch = []
    for epoch in range(1, EPOCHS + 1):
      at_epoch = []
      for seed in SEEDS:
        variant_dir = _variant_dir(grid, seed, name)
        step = epoch * _final(grid, seed, name)['total_steps'] // EPOCHS
        at_epoch += [r['eval_accuracy'] for r in metrics.read_metrics(str(variant_dir))
                     if r.get('step') == step and 'eval_accuracy' in r]
      assert len(at_epoch) == len(SEEDS)
      by_epoch.append(f'{100 * np.mean(at_epoch):.2f}')
    assert _row(section, study_table.label(key)) == [study_table.label(key)] + by_epoch


def test_unfinished_run_is_flagged_and_left_out(grid, tmp_path, study_table):
  root = tmp_path / 'root'
  shutil.copytree(grid, root)
  variant_dir = _variant_dir(root, 1, 'w2a2_uniform')
  records = metrics.read_metrics(str(variant_dir))
  cut = [r for r in records if not r.get('summary') and r.get('step', 0) <= 2]
  cut.append({**records[-1], 'step': 2, 'preempted': 'SIGTERM'})
  with open(variant_dir / 'metrics.jsonl', 'w', encoding='utf-8') as f:
    f.writelines(json.dumps(r) + '\n' for r in cut)
  report = study_table.report(str(root))
  label = study_table.label(('uniform', 0.1))
  runs = [line for line in _section(report, 'Runs').splitlines()
          if line.startswith(f'| {label} | 1 |')]
  assert len(runs) == 1 and 'not finished (step 2)' in runs[0]
  assert runs[0].endswith(f"| {records[-1]['train_seconds']:,.0f} s in stopped sessions |")
  assert _row(_section(report, 'Final held-out top-1'), label)[1] == '1'  # seeds
  assert _row(_section(report, 'Paired difference'), 'quantizer lr x 1')[1] == '1'


def test_a_directory_without_runs_is_an_error(tmp_path, study_table, capsys):
  (tmp_path / 'seed0' / 'w2a2_n2uq').mkdir(parents=True)  # no variant with metrics
  assert study_table.main([str(tmp_path)]) == 2
  err = capsys.readouterr().err
  assert err.count('\n') == 1 and 'holds no W2A2 run' in err
  assert 'RUN_ROOT/seed<S>/w2a2_<METHOD>[_qlr<MULT>]/<variant>/' in err
