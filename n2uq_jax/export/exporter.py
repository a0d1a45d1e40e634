"""Writing an export: :func:`export_model` (a model in memory) and :func:`export_run`
(a variant run directory), behind ``python -m n2uq_jax.export``."""

from __future__ import annotations

import os
from typing import Any

import numpy as np
from flax import nnx

from n2uq_jax import runs
from n2uq_jax.export import graph as graph_lib
from n2uq_jax.export import onnx_graph, tables

ONNX_FILE = 'model.onnx'


def float_parameter_bytes(model: nnx.Module) -> dict[str, int]:
  """float32 bytes of every module's parameters and BatchNorm statistics, by the
  dotted name the export uses (an input quantizer counts with its conv)."""
  out: dict[str, int] = {}
  for path, node in nnx.iter_graph(model):
    if not isinstance(node, (nnx.Param, nnx.BatchStat)):
      continue
    parts = [str(p) for p in path[:-1]]
    if parts and parts[-1] in ('input_quantizer', 'weight_quantizer'):
      parts = parts[:-1]
    name = '.'.join(parts)
    out[name] = out.get(name, 0) + 4 * int(np.asarray(node.get_value()).size)
  return out


def _refuse_to_overwrite(out_dir: str) -> None:
  present = [name for name in (tables.TABLES_FILE, tables.MANIFEST_FILE, ONNX_FILE)
             if os.path.exists(os.path.join(out_dir, name))]
  if present:
    raise ValueError(f'{out_dir!r} already holds an export ({", ".join(present)}); refusing '
                     'to overwrite it: choose another output directory, or pass '
                     'overwrite=True (--overwrite)')


def export_model(model: nnx.Module, out_dir: str, *, model_name: str,
                 source: dict[str, Any] | None = None, write_onnx: bool = True,
                 overwrite: bool = False) -> dict[str, Any]:
  """Exports an N2UQ model (evaluation mode) into ``out_dir``.

  Writes ``tables.safetensors``, ``manifest.json`` and (``write_onnx``)
  ``model.onnx``. Returns the size report of :func:`tables.size_report` with the
  manifest under ``"manifest"``.

  Raises:
    ValueError: ``out_dir`` already holds an export and ``overwrite`` is False.
  """
  if not overwrite:
    _refuse_to_overwrite(out_dir)
  model.eval()
  graph = graph_lib.fold(graph_lib.trace_model(model))
  stem = next(n for n in graph.nodes if n.op == 'conv')
  head = [n for n in graph.nodes if n.op == 'dense'][-1]
  num_classes = graph.tensors[head.tensors['kernel']].shape[-1]
  in_channels = graph.tensors[stem.tensors['kernel']].shape[2]
  manifest = tables.write_tables(graph, out_dir, model_name=model_name,
                                 num_classes=num_classes, in_channels=in_channels,
                                 source=source or {})
  if write_onnx:
    onnx_graph.write_onnx(graph, os.path.join(out_dir, ONNX_FILE), in_channels=in_channels)
  report = tables.size_report(graph, float_parameter_bytes(model))
  report['manifest'] = manifest
  return report


def export_run(run_dir: str, out_dir: str, *, step=None, write_onnx: bool = True,
               overwrite: bool = False) -> dict[str, Any]:
  """Exports the checkpoint of a variant run directory (``step`` as in
  :func:`n2uq_jax.runs.load_model`: the latest by default; ``overwrite`` as in
  :func:`export_model`)."""
  if not overwrite:
    _refuse_to_overwrite(out_dir)
  run = runs.restore_run(run_dir, step=step)
  source = {'step': run.step, 'checkpoint_sha256': run.checkpoint_sha256,
            'variant': str(run.config.variants), 'method': str(run.config.method)}
  return export_model(run.model, out_dir, model_name=run.model_name, source=source,
                      write_onnx=write_onnx, overwrite=overwrite)


def format_report(report: dict[str, Any]) -> str:
  """The size report as text: bytes per layer and in total against float32."""
  lines = [f'{"layer":<34}{"export bytes":>14}{"float32 bytes":>15}']
  for layer in report['layers']:
    lines.append(f'{layer["name"]:<34}{layer["export_bytes"]:>14,}{layer["float32_bytes"]:>15,}')
  k, t = report['quantized_kernels'], report['total']
  lines.append(f'quantized conv kernels: {k["export_bytes"]:,} bytes vs {k["float32_bytes"]:,} '
               f'float32 ({k["ratio"]:.1f}x smaller)')
  lines.append(f'whole model: {t["export_bytes"]:,} bytes vs {t["float32_bytes"]:,} float32 '
               f'({t["ratio"]:.2f}x smaller)')
  return '\n'.join(lines)
