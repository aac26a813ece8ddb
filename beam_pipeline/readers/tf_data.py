"""tf.data reader: parsed records with the image decoded and normalised, ready for ``model.fit``.

    from beam_pipeline.readers.tf_data import MaskedBinaryCrossentropy, dataset
    train = dataset("OUTPUT", "train", normalization="imagenet", supervised=True).shuffle(1000).batch(32)
    model.compile(optimizer="adam", loss=MaskedBinaryCrossentropy(from_logits=True))  # model: image -> 14 logits
    model.fit(train, validation_data=dataset("OUTPUT", "val", supervised=True).batch(32))

Each element is a dict of every feature in metadata.json (scalars as scalars, token ids as 1-D int64 of their own
length: batch them with ``padded_batch``/``ragged_batch`` or drop them) plus ``image``: float32
[size, size, channels], (x / 255 - mean) / std. JPEG is decoded with the accurate integer DCT, as cv2 (the PyTorch
reader) and PIL decode it, so both readers give the same pixels. A feature metadata.json marks ``optional`` (medfuse's
``image/*``, present when ``has_cxr == 1``) reads as 0 or "" in a record without it, and such a record's ``image`` is
all zeros (what MedFuse feeds for a missing X-ray); tell them apart by ``has_cxr``. The dict form reads every cohort.

With ``supervised=True`` (cohorts whose records have labels/binary and labels/mask) it is ``(image, labels, mask)``,
both float32 [14] in ``label_order``: Keras reads a 3-tuple as ``(x, y, sample_weight)``, so the mask weighs every
label of every record. ``labels`` is 1 or 0 where ``mask`` is 1 and -1 where it is 0 (an uncertain label under
``--uncertain_policy=ignore``; every label of an unlabelled study): never a silent 0. Train with a per-label loss
such as ``MaskedBinaryCrossentropy`` (below); Keras's own ``binary_crossentropy`` averages over the 14 labels before
weighting and fails on a [batch, 14] weight. Keras metrics (``AUC(multi_label=True, num_labels=14)``,
``BinaryAccuracy``) apply the per-label weight correctly.
"""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

from beam_pipeline.readers.common import UnsupportedCohort, cohort_of, open_run, shard_files
from beam_pipeline.readers.normalization import mean_std

_DTYPES = {"int64": tf.int64, "float32": tf.float32, "string": tf.string}
_ABSENT = {"int64": 0, "float32": 0.0, "string": b""}  # an optional feature's value in a record without it


def parse_spec(metadata: dict) -> dict:
    """FixedLenFeature for fixed shapes, VarLenFeature for variable-length ones (shape [null] in metadata.json,
    empty where absent). An optional fixed feature (``"optional": true``: present only when its ``present_when``
    holds) gets a default, 0 or "", so a record without it parses."""
    return {name: _feature(f) for name, f in metadata["features"].items()}


def _feature(f: dict):
    if None in f["shape"]:
        return tf.io.VarLenFeature(_DTYPES[f["dtype"]])
    default = np.full(f["shape"], _ABSENT[f["dtype"]]) if f.get("optional") else None
    return tf.io.FixedLenFeature(f["shape"], _DTYPES[f["dtype"]], default_value=default)


def decode_pixels(encoded: tf.Tensor, image_format: str) -> tf.Tensor:
    """uint8 [height, width, 1]. JPEG with the accurate integer DCT: TF's default (fast) DCT differs from cv2's and
    PIL's decode by up to a few grey levels on half the pixels, which would make the two readers disagree."""
    if image_format == "jpeg":
        return tf.io.decode_jpeg(encoded, channels=1, dct_method="INTEGER_ACCURATE")
    return tf.io.decode_png(encoded, channels=1)


def supervised_targets(example: dict) -> tuple[tf.Tensor, tf.Tensor]:
    """(labels, mask) as float32 from a parsed record: labels/binary (-1 where there is no target) and labels/mask."""
    return tf.cast(example["labels/binary"], tf.float32), tf.cast(example["labels/mask"], tf.float32)


def dataset(output: str, split: str, *, normalization: str = "imagenet", channels: int = 3,
            supervised: bool = False) -> tf.data.Dataset:
    """A split's records in shard order; ``supervised=True`` gives ``(image, labels, mask)`` for ``model.fit``."""
    folder, metadata = open_run(output)
    if metadata["image"] is None:
        raise ValueError(f"{output} was built with --images=false: there is no image to decode")
    if supervised and not {"labels/binary", "labels/mask"} <= set(metadata["features"]):
        raise UnsupportedCohort(f"supervised=True reads labels/binary and labels/mask, which the records of "
                                f"{output}, a {cohort_of(metadata)} output, do not have: read dicts "
                                "(supervised=False) and take the cohort's targets from them")
    spec = parse_spec(metadata)
    size, image_format = metadata["image"]["size"], metadata["image"]["format"]
    mean, std = (tf.constant(v, tf.float32) for v in mean_std(normalization, channels))

    def normalized(encoded):
        image = tf.cast(tf.ensure_shape(decode_pixels(encoded, image_format), [size, size, 1]), tf.float32) / 255.0
        if channels == 3:
            image = tf.image.grayscale_to_rgb(image)
        return (image - mean) / std

    def decode(serialized):
        example = {name: tf.sparse.to_dense(value) if isinstance(value, tf.sparse.SparseTensor) else value
                   for name, value in tf.io.parse_single_example(serialized, spec).items()}
        encoded = example["image/encoded"]  # "" only where the spec marks it optional and the record has none
        image = tf.cond(tf.strings.length(encoded) > 0, lambda: normalized(encoded),
                        lambda: tf.zeros([size, size, channels]))
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
