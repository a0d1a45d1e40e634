"""``python -m n2uq_jax.export`` and ``load_model`` and ``python -m n2uq_jax.inspect`` on the short default run: a
full-precision variant is refused in one line, the export's files share one mode, the
two size reports say what each counts, and reading a checkpoint prints no orbax warning."""

import os
import re

import numpy as np
from safetensors.numpy import load_file

from n2uq_jax.export import __main__ as export_cli
from n2uq_jax.inspect import __main__ as inspect_cli
from n2uq_jax.train import restore

ORBAX_METADATA_WARNING = 'Metadata file does not exist'


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
                                                                       capfd):
  workdir, _ = default_run
  out_dir = tmp_path / 'w2a2_export'
  assert export_cli.main([str(workdir / 'w2a2'), str(out_dir), '--no-onnx']) == 0
  captured = capfd.readouterr()
  assert ORBAX_METADATA_WARNING not in captured.err, captured.err
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


def test_load_model_prints_no_orbax_warning(default_run, capfd):
  workdir, _ = default_run
  model = restore.load_model(str(workdir / 'w2a2'), step='best')
  assert np.asarray(model.conv1.kernel[...]).shape == (3, 3, 1, 32)
  assert ORBAX_METADATA_WARNING not in capfd.readouterr().err


def test_inspect_prints_no_orbax_warning(default_run, tmp_path, capfd):
  workdir, _ = default_run
  assert inspect_cli.main([str(workdir / 'fp'), '--out', str(tmp_path), '--batches', '1',
                           '--batch-size', '16']) == 0
  captured = capfd.readouterr()
  assert 'model size: ' in captured.out
  assert ORBAX_METADATA_WARNING not in captured.err, captured.err
