"""``tables.safetensors`` and ``manifest.json`` of an export (docs/EXPORT.md).

:func:`write_tables` stores a folded :class:`~n2uq_jax.export.graph.Graph` and
:func:`read_tables` loads it back; :func:`size_report` compares the bytes of each
layer with its float32 parameters.
"""

from __future__ import annotations

import json
import os
from typing import Any

import numpy as np
from safetensors.numpy import load_file, save

from n2uq_jax.export.graph import Graph, Node

FORMAT = 'n2uq-integer-export'
FORMAT_VERSION = 1
TABLES_FILE = 'tables.safetensors'
MANIFEST_FILE = 'manifest.json'


def _layers(graph: Graph) -> list[dict[str, Any]]:
  """One record per quantized conv: its bits and how its input quantizer is stored."""
  quantizers = {n.name: n for n in graph.nodes if n.op in ('quantize', 'threshold')}
  layers = []
  for node in graph.nodes:
    if node.op != 'qconv':
      continue
    q = quantizers[node.name]
    rules = q.attrs.get('rules')
    layers.append({
        'name': node.name,
        'weight_bits': node.attrs['weight_bits'],
        'activation_bits': node.attrs['activation_bits'],
        'activation_quantizer': q.attrs['family'],
        'threshold_rule': 'folded_int' if q.op == 'threshold' else 'float',
        'channel_rules': ({r: rules.count(r) for r in sorted(set(rules))} if rules else None),
    })
  return layers


def write_tables(graph: Graph, out_dir: str, *, model_name: str, num_classes: int,
                 in_channels: int, source: dict[str, Any]) -> dict[str, Any]:
  """Writes ``tables.safetensors`` and ``manifest.json`` into ``out_dir``; returns
  the manifest."""
  os.makedirs(out_dir, exist_ok=True)
  tensors = {name: np.ascontiguousarray(value) for name, value in graph.tensors.items()}
  # Serialised in memory and written with open() so that the file gets the same
  # permissions as manifest.json (safetensors' save_file creates it 0600).
  with open(os.path.join(out_dir, TABLES_FILE), 'wb') as f:
    f.write(save(tensors, metadata={'format': FORMAT, 'format_version': str(FORMAT_VERSION)}))
  manifest = {
      'format': FORMAT,
      'format_version': FORMAT_VERSION,
      'model': model_name,
      'num_classes': int(num_classes),
      'in_channels': int(in_channels),
      'source': source,
      'layers': _layers(graph),
      'graph': {'input': graph.input, 'output': graph.output, 'layout': 'NHWC',
                'nodes': [node.to_json() for node in graph.nodes]},
      'tensors': {name: {'shape': list(value.shape), 'dtype': str(value.dtype),
                         **({'packed': graph.packed[name]} if name in graph.packed else {})}
                  for name, value in sorted(tensors.items())},
  }
  with open(os.path.join(out_dir, MANIFEST_FILE), 'w', encoding='utf-8') as f:
    json.dump(manifest, f, indent=1)
  return manifest


def read_tables(export_dir: str) -> tuple[dict[str, Any], Graph]:
  """``(manifest, graph)`` of an export directory.

  Raises:
    ValueError: missing files or an unknown format version.
  """
  manifest_path = os.path.join(export_dir, MANIFEST_FILE)
  tables_path = os.path.join(export_dir, TABLES_FILE)
  for path in (manifest_path, tables_path):
    if not os.path.isfile(path):
      raise ValueError(f'{export_dir!r} is not an export directory: {os.path.basename(path)} '
                       'is missing (write one with python -m n2uq_jax.export RUN_DIR OUT_DIR)')
  with open(manifest_path, encoding='utf-8') as f:
    manifest = json.load(f)
  if manifest.get('format') != FORMAT or manifest.get('format_version') != FORMAT_VERSION:
    raise ValueError(f'{manifest_path!r} has format {manifest.get("format")!r} version '
                     f'{manifest.get("format_version")!r}; this reader takes {FORMAT!r} '
                     f'version {FORMAT_VERSION}')
  tensors = load_file(tables_path)
  packed = {name: info['packed'] for name, info in manifest['tensors'].items()
            if 'packed' in info}
  nodes = [Node.from_json(record) for record in manifest['graph']['nodes']]
  return manifest, Graph(nodes, tensors, packed, manifest['graph']['input'],
                         manifest['graph']['output'])


def size_report(graph: Graph, float_bytes: dict[str, int]) -> dict[str, Any]:
  """Bytes per layer in the export against float32.

  Args:
    graph: the exported graph.
    float_bytes: float32 bytes of each layer's parameters in the checkpoint
      (by dotted module name), for the ratio.

  Returns:
    ``{"layers": [{"name", "export_bytes", "float32_bytes"}], "quantized_kernels":
    {...}, "total": {...}}``.
  """
  per_layer: dict[str, int] = {}
  for name, value in graph.tensors.items():
    layer = name.rsplit('.', 1)[0].removesuffix('.input_quantizer')
    per_layer[layer] = per_layer.get(layer, 0) + value.nbytes
  kernels = [n for n in graph.nodes if n.op == 'qconv']
  kernel_export = sum(graph.tensors[n.tensors['weight_codes']].nbytes for n in kernels)
  kernel_float = sum(4 * int(np.prod(n.attrs['kernel_shape'])) for n in kernels)
  layers = [{'name': name, 'export_bytes': size, 'float32_bytes': float_bytes.get(name, 0)}
            for name, size in per_layer.items()]
  total_export = sum(per_layer.values())
  total_float = sum(float_bytes.values())
  return {
      'layers': layers,
      'quantized_kernels': {'export_bytes': kernel_export, 'float32_bytes': kernel_float,
                            'ratio': kernel_float / max(kernel_export, 1)},
      'total': {'export_bytes': total_export, 'float32_bytes': total_float,
                'ratio': total_float / max(total_export, 1)},
  }
