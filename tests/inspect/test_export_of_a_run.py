"""``python -m n2uq_jax.export``, ``load_model`` and ``python -m n2uq_jax.inspect`` on the
short default run: a full-precision variant is refused in one line, the export's files
share one mode, the two size reports say what each counts, and reading a checkpoint logs
no orbax warning."""

import logging
import os
import re

import numpy as np
from safetensors.numpy import load_file

from n2uq_jax.export import __main__ as export_cli
from n2uq_jax.inspect import __main__ as inspect_cli
from n2uq_jax.train import restore

ORBAX_METADATA_WARNING = 'Metadata file does not exist'


def _orbax_warnings(caplog):
  return [r.getMessage() for r in caplog.records if ORBAX_METADATA_WARNING in r.getMessage()]


def test_export_refuses_a_full_precision_run_in_one_line(default_run, tmp_path, capfd):
  workdir, _ = default_run
  out_dir = tmp_path / 'fp_export'
  assert export_cli.main([str(workdir / 'fp'), str(out_dir), '--no-onnx']) == 2
  captured = capfd.readouterr()
  lines = captured.err.strip().splitlines()
  assert len(lines) == 1, captured.err
  assert lines[0].startswith('error: small_cnn ') and "(variant 'fp')" in lines[0]
  assert 'no quantized layer to export' in lines[0]
  assert captured.out == '' and not out_dir.exists()  # nothing written, no 0-layer manifest


def test_export_files_share_one_mode_and_the_size_says_what_it_counts(default_run, tmp_path,
                                                                       capfd, caplog):
  workdir, _ = default_run
  out_dir = tmp_path / 'w2a2_export'
  with caplog.at_level(logging.WARNING):
    assert export_cli.main([str(workdir / 'w2a2'), str(out_dir), '--no-onnx']) == 0
  captured = capfd.readouterr()
  assert not _orbax_warnings(caplog)
  umask = os.umask(0)
  os.umask(umask)
  modes = {name: os.stat(out_dir / name).st_mode & 0o777 for name in os.listdir(out_dir)}
  assert modes == {'tables.safetensors': 0o666 & ~umask, 'manifest.json': 0o666 & ~umask}
  match = re.search(r'^whole model: ([\d,]+) bytes as stored in tables\.safetensors '
                    r'\(packed weight codes, per-channel scales, threshold tables, float '
                    r'tensors\) vs ([\d,]+) float32', captured.out, re.MULTILINE)
  assert match, captured.out
  stored = sum(t.nbytes for t in load_file(out_dir / 'tables.safetensors').values())
  assert int(match.group(1).replace(',', '')) == stored


def test_load_model_logs_no_orbax_warning(default_run, caplog):
  workdir, _ = default_run
  with caplog.at_level(logging.WARNING):
    model = restore.load_model(str(workdir / 'w2a2'), step='best')
  assert np.asarray(model.conv1.kernel[...]).shape == (3, 3, 1, 32)
  assert not _orbax_warnings(caplog)


def test_inspect_logs_no_orbax_warning(default_run, tmp_path, capfd, caplog):
  workdir, _ = default_run
  with caplog.at_level(logging.WARNING):
    assert inspect_cli.main([str(workdir / 'fp'), '--out', str(tmp_path), '--batches', '1',
                             '--batch-size', '16']) == 0
  assert 'model size: ' in capfd.readouterr().out
  assert not _orbax_warnings(caplog)
