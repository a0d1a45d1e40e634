"""Input pipelines: embedded, tfds and image-folder sources, SPEC 5 transforms, grain.

    from n2uq_jax import data
    config = data.default_config()           # the embedded default (sklearn digits)
    pipeline = data.create_pipeline(config, per_host_batch_size=32, seed=0)
    it = pipeline.train_iterator()           # {"image": f32 [B,H,W,C], "label": i32 [B]}
    for batch in pipeline.eval_batches():    # ... plus "mask": bool [B]
      ...

See `config` for the fields of a data config and `pipeline` for sharding and resuming.
"""

from n2uq_jax.data.config import default_config
from n2uq_jax.data.config import validate as validate_config
from n2uq_jax.data.pipeline import Pipeline
from n2uq_jax.data.pipeline import create_pipeline
from n2uq_jax.data.pipeline import release_worker_batches
from n2uq_jax.data.tfds_source import DatasetNotPreparedError
from n2uq_jax.data.transforms import IMAGENET_MEAN
from n2uq_jax.data.transforms import IMAGENET_STD

__all__ = [
    "DatasetNotPreparedError",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "Pipeline",
    "create_pipeline",
    "default_config",
    "release_worker_batches",
    "validate_config",
]
