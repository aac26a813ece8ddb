"""tf.data reader: parsed records with the image decoded and normalised, ready for ``model.fit``.

    from beam_pipeline.readers.tf_data import MaskedBinaryCrossentropy, dataset
    train = dataset("OUTPUT", "train", normalization="imagenet", supervised=True).shuffle(1000).batch(32)
    model.compile(optimizer="adam", loss=MaskedBinaryCrossentropy(from_logits=True))  # model: image -> 14 logits
    model.fit(train, validation_data=dataset("OUTPUT", "val", supervised=True).batch(32))

Each element is a dict of every feature in metadata.json (scalars as scalars, token ids as 1-D int64 of their own
length: batch them with ``padded_batch``/``ragged_batch`` or drop them) plus ``image``: float32
[size, size, channels], (x / 255 - mean) / std.

With ``supervised=True`` it is ``(image, labels, mask)``, both float32 [14] in ``label_order``: Keras reads a 3-tuple
as ``(x, y, sample_weight)``, so the mask weighs every label of every record. ``labels`` is 1 or 0 where ``mask`` is
1 and -1 where it is 0 (an uncertain label under ``--uncertain_policy=ignore``; every label of an unlabelled
study): never a silent 0. Train with a per-label loss such as ``MaskedBinaryCrossentropy`` (below); Keras's own
``binary_crossentropy`` averages over the 14 labels before weighting and fails on a [batch, 14] weight. Keras
metrics (``AUC(multi_label=True, num_labels=14)``, ``BinaryAccuracy``) apply the per-label weight correctly.
"""

from __future__ import annotations

import keras
import tensorflow as tf

from beam_pipeline.readers.common import open_run, shard_files
from beam_pipeline.readers.normalization import mean_std

_DTYPES = {"int64": tf.int64, "float32": tf.float32, "string": tf.string}


def parse_spec(metadata: dict) -> dict:
    """FixedLenFeature for fixed shapes, VarLenFeature for variable-length ones (shape [null] in metadata.json)."""
    return {name: tf.io.VarLenFeature(_DTYPES[f["dtype"]]) if None in f["shape"] else
            tf.io.FixedLenFeature(f["shape"], _DTYPES[f["dtype"]]) for name, f in metadata["features"].items()}


def supervised_targets(example: dict) -> tuple[tf.Tensor, tf.Tensor]:
    """(labels, mask) as float32 from a parsed record: labels/binary (-1 where there is no target) and labels/mask."""
    return tf.cast(example["labels/binary"], tf.float32), tf.cast(example["labels/mask"], tf.float32)


def dataset(output: str, split: str, *, normalization: str = "imagenet", channels: int = 3,
            supervised: bool = False) -> tf.data.Dataset:
    """A split's records in shard order; ``supervised=True`` gives ``(image, labels, mask)`` for ``model.fit``."""
    folder, metadata = open_run(output)
    if metadata["image"] is None:
        raise ValueError(f"{output} was built with --images=false: there is no image to decode")
    spec = parse_spec(metadata)
    size = metadata["image"]["size"]
    mean, std = (tf.constant(v, tf.float32) for v in mean_std(normalization, channels))

    def decode(serialized):
        example = {name: tf.sparse.to_dense(value) if isinstance(value, tf.sparse.SparseTensor) else value
                   for name, value in tf.io.parse_single_example(serialized, spec).items()}
        pixels = tf.io.decode_image(example["image/encoded"], channels=1, expand_animations=False)
        pixels = tf.ensure_shape(pixels, [size, size, 1])
        image = tf.cast(pixels, tf.float32) / 255.0
        if channels == 3:
            image = tf.image.grayscale_to_rgb(image)
        image = (image - mean) / std
        if supervised:
            return (image, *supervised_targets(example))
        return {**example, "image": image}

    compression = "GZIP" if metadata["config"]["compression"] == "gzip" else ""
    files = shard_files(folder, split, metadata)
    return tf.data.TFRecordDataset(files, compression_type=compression).map(
        decode, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)


@keras.saving.register_keras_serializable(package="beam_pipeline")
class MaskedBinaryCrossentropy(keras.losses.Loss):
    """Binary cross-entropy per label, weighted by the mask Keras passes as ``sample_weight`` and averaged over the
    valid labels of the batch (reduction ``mean_with_sample_weight``; a batch without any valid label gives 0).
    Labels under mask 0 (stored as -1) contribute nothing."""

    def __init__(self, from_logits: bool = False, name: str = "masked_binary_crossentropy", **kwargs):
        kwargs.setdefault("reduction", "mean_with_sample_weight")
        super().__init__(name=name, **kwargs)
        self.from_logits = from_logits

    def call(self, y_true, y_pred):
        return keras.ops.binary_crossentropy(y_true, y_pred, from_logits=self.from_logits)

    def get_config(self):
        return {**super().get_config(), "from_logits": self.from_logits}
