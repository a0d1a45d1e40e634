"""Writing an export: :func:`export_model` (a model in memory) and :func:`export_run`
(a variant run directory), behind ``python -m n2uq_jax.export``."""

from __future__ import annotations

import os
from typing import Any

import numpy as np
from flax import nnx

from n2uq_jax.export import graph as graph_lib
from n2uq_jax.export import engine, onnx_graph, qonnx_graph, stablehlo, tables

ONNX_FILE = 'model.onnx'
FORMAT_FILES = {'onnx': ONNX_FILE, 'qonnx': 'model.qonnx.onnx', 'stablehlo': 'model.stablehlo'}
"""The file each ``format`` writes besides the tables and the manifest."""


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
  present = [name for name in (tables.TABLES_FILE, tables.MANIFEST_FILE, *FORMAT_FILES.values())
             if os.path.exists(os.path.join(out_dir, name))]
  if present:
    raise ValueError(f'{out_dir!r} already holds an export ({", ".join(present)}); refusing '
                     'to overwrite it: choose another output directory, or pass '
                     'overwrite=True (--overwrite)')


def export_model(model: nnx.Module, out_dir: str, *, model_name: str,
                 source: dict[str, Any] | None = None, write_onnx: bool = True,
                 overwrite: bool = False, format: str = 'onnx',  # pylint: disable=redefined-builtin
                 image_size: int | None = None, layout: str = 'NCHW') -> dict[str, Any]:
  """Exports an N2UQ model (evaluation mode) into ``out_dir``.

  Writes ``tables.safetensors``, ``manifest.json`` and (``write_onnx``) the file of
  ``format`` (:data:`FORMAT_FILES`): ``model.onnx``, ``model.qonnx.onnx``
  (``MultiThreshold`` nodes, batch 1, input ``layout``) or ``model.stablehlo``
  (``jax.export``, symbolic batch); the last two take fixed images of
  ``image_size``. Returns the size report of :func:`tables.size_report` with the
  manifest under ``"manifest"``.

  Raises:
    ValueError: ``out_dir`` already holds an export and ``overwrite`` is False; an
      unknown ``format``; ``image_size`` missing where the format needs it; the model
      has no quantized conv (a full-precision model: nothing to store as integers).
  """
  if format not in FORMAT_FILES:
    raise ValueError(f'format must be one of {sorted(FORMAT_FILES)}, got {format!r}')
  if write_onnx and format != 'onnx' and image_size is None:
    raise ValueError(f'format {format!r} needs image_size (the input height = width)')
  if not overwrite:
    _refuse_to_overwrite(out_dir)
  model.eval()
  graph = graph_lib.fold(graph_lib.trace_model(model))
  if not any(n.op == 'qconv' for n in graph.nodes):
    variant = (source or {}).get('variant')
    raise ValueError(f'{model_name}' + (f' (variant {variant!r})' if variant else '') +
                     ' has no quantized layer to export: the integer export is for quantized '
                     'variants (w2a2, w4a4, ...), not a full-precision one')
  stem = next(n for n in graph.nodes if n.op == 'conv')
  head = [n for n in graph.nodes if n.op == 'dense'][-1]
  num_classes = graph.tensors[head.tensors['kernel']].shape[-1]
  in_channels = graph.tensors[stem.tensors['kernel']].shape[2]
  if write_onnx and format == 'qonnx':  # built first: a refused layer leaves no partial export
    qonnx_model = qonnx_graph.build_qonnx(graph, in_channels=in_channels, image_size=image_size,
                                          layout=layout)
  manifest = tables.write_tables(graph, out_dir, model_name=model_name,
                                 num_classes=num_classes, in_channels=in_channels,
                                 source=source or {})
  path = os.path.join(out_dir, FORMAT_FILES[format])
  if write_onnx and format == 'onnx':
    onnx_graph.write_onnx(graph, path, in_channels=in_channels)
  elif write_onnx and format == 'qonnx':
    qonnx_graph.save(qonnx_model, path)
  elif write_onnx:
    stablehlo.write_stablehlo(engine.IntegerModel(manifest, graph), path,
                              image_size=image_size)
  report = tables.size_report(graph, float_parameter_bytes(model))
  report['manifest'] = manifest
  return report


def export_run(run_dir: str, out_dir: str, *, step=None, write_onnx: bool = True,
               overwrite: bool = False, format: str = 'onnx',  # pylint: disable=redefined-builtin
               layout: str = 'NCHW') -> dict[str, Any]:
  """Exports the checkpoint of a variant run directory (``step`` as in
  :func:`n2uq_jax.train.load_model`; ``overwrite``, ``format`` and ``layout`` as in
  :func:`export_model`, the image size from the run's ``data.image_size``)."""
  if not overwrite:
    _refuse_to_overwrite(out_dir)
  from n2uq_jax.train import restore  # pylint: disable=g-import-not-at-top
  run = restore.restore_run(run_dir, step=step)
  source = {'step': run.step, 'checkpoint_sha256': run.checkpoint_sha256,
            'variant': str(run.config.variants), 'method': str(run.config.method)}
  return export_model(run.model, out_dir, model_name=run.model_name, source=source,
                      write_onnx=write_onnx, overwrite=overwrite, format=format,
                      image_size=int(run.config.data.image_size), layout=layout)


def format_report(report: dict[str, Any]) -> str:
  """The size report as text: bytes per layer and in total against float32."""
  lines = [f'{"layer":<34}{"export bytes":>14}{"float32 bytes":>15}']
  for layer in report['layers']:
    lines.append(f'{layer["name"]:<34}{layer["export_bytes"]:>14,}{layer["float32_bytes"]:>15,}')
  k, t = report['quantized_kernels'], report['total']
  lines.append(f'quantized conv kernels: {k["export_bytes"]:,} bytes vs {k["float32_bytes"]:,} '
               f'float32 ({k["ratio"]:.1f}x smaller)')
  lines.append(f'whole model: {t["export_bytes"]:,} bytes as stored in {tables.TABLES_FILE} '
               '(packed weight codes, per-channel scales, threshold tables, float tensors) vs '
               f'{t["float32_bytes"]:,} float32 ({t["ratio"]:.2f}x smaller)')
  return '\n'.join(lines)
