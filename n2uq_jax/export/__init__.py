"""Integer export of trained N2UQ models (SPEC 8; the format is docs/EXPORT.md).

    python -m n2uq_jax.export RUN_DIR OUT_DIR [--step N|best]

writes ``tables.safetensors`` (bit-packed weight codes, per-channel weight scales,
thresholds and output steps, folded integer thresholds, every float tensor),
``manifest.json`` (the layer graph) and ``model.onnx``.
``IntegerModel.load(OUT_DIR)`` runs an export from those files alone.
"""

from n2uq_jax.export.engine import IntegerModel
from n2uq_jax.export.exporter import export_model, export_run, format_report
from n2uq_jax.export.reference import fake_quantized_codes

__all__ = ['IntegerModel', 'export_model', 'export_run', 'format_report',
           'fake_quantized_codes']
