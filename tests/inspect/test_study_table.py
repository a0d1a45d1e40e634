"""``bench/study_table.py`` reads the table of docs/REPRODUCTION.md from real run
directories: a short run of the embedded default laid out as the CIFAR-10 study lays
out its runs, and a run cut by a preemption and resumed."""

import importlib.util
import json
import pathlib
import shutil

import pytest

from n2uq_jax.train import metrics

_SCRIPT = pathlib.Path(__file__).resolve().parents[2] / 'bench' / 'study_table.py'


@pytest.fixture(scope='module')
def study_table():
  spec = importlib.util.spec_from_file_location('study_table', _SCRIPT)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def _row(table, label):
  rows = [line for line in table.splitlines() if line.startswith(f'| {label} |')]
  assert len(rows) == 1, table
  return [cell.strip() for cell in rows[0].strip('|').split('|')]


def test_table_of_finished_runs(default_run, tmp_path, study_table, capsys):
  workdir, summaries = default_run
  seed_dir = tmp_path / 'seed0'
  shutil.copytree(workdir / 'fp', seed_dir / 'fp' / 'fp')
  shutil.copytree(workdir / 'w2a2', seed_dir / 'w2a2_n2uq' / 'w2a2')
  assert study_table.main([str(seed_dir)]) == 0
  table = capsys.readouterr().out
  assert len(table.splitlines()) == 4  # header, rule, the two runs present
  for label, variant in (('full precision (cross-entropy)', 'fp'), ('W2A2 N2UQ', 'w2a2')):
    records = metrics.read_metrics(str(workdir / variant))
    evals = [r for r in records if 'eval_accuracy' in r]
    best = max(evals, key=lambda r: r['eval_accuracy'])
    summary = summaries[variant]
    assert _row(table, label) == [
        label, f"{summary['step']} steps", f"{100 * summary['final_eval_accuracy']:.2f}",
        f"{100 * summary['best_eval_accuracy']:.2f} (step {best['step']})",
        f"{summary['train_seconds']:,.0f} s"]


def test_resumed_run_sums_its_sessions_and_unfinished_run_says_so(default_run, tmp_path,
                                                                  study_table):
  workdir, _ = default_run
  variant_dir = tmp_path / 'seed0' / 'w2a2_n2uq' / 'w2a2'
  shutil.copytree(workdir / 'w2a2', variant_dir)
  records = metrics.read_metrics(str(variant_dir))
  summary = next(r for r in records if r.get('summary'))
  # As a run preempted at step 3 writes it, then the session that finished it.
  first = {**summary, 'step': 3, 'preempted': 'SIGTERM', 'train_seconds': 1000.4}
  cut = [first] + [r for r in records if not r.get('summary') and r.get('step', 0) <= 3]
  with open(variant_dir / 'metrics.jsonl', 'w', encoding='utf-8') as f:
    f.writelines(json.dumps(r) + '\n' for r in cut)
  assert 'not finished (step 3)' in _row(study_table.table(str(tmp_path / 'seed0')),
                                          'W2A2 N2UQ')[2]

  with open(variant_dir / 'metrics.jsonl', 'a', encoding='utf-8') as f:
    f.writelines(json.dumps(r) + '\n' for r in records if r.get('step', 0) > 3)
  row = _row(study_table.table(str(tmp_path / 'seed0')), 'W2A2 N2UQ')
  assert row[2] == f"{100 * summary['final_eval_accuracy']:.2f}"
  assert row[4] == f"{1000.4 + summary['train_seconds']:,.0f} s"
