"""tf.data reader: parsed records with the image decoded and normalised, ready for ``model.fit``.

    from beam_pipeline.readers.tf_data import dataset
    train = dataset("OUTPUT", "train", normalization="imagenet", supervised=True).shuffle(1000).batch(32)
    model.fit(train, validation_data=dataset("OUTPUT", "val", supervised=True).batch(32))

Each element is a dict of every feature in metadata.json (scalars as scalars, token ids as 1-D int64 of their own
length: batch them with ``padded_batch``/``ragged_batch`` or drop them) plus ``image``: float32
[size, size, channels], (x / 255 - mean) / std. With ``supervised=True`` it is ``(image, labels/binary as float32)``;
``labels/mask`` tells which targets are valid if you write a masked loss.
"""

from __future__ import annotations

import tensorflow as tf

from beam_pipeline.readers.common import open_run, shard_files
from beam_pipeline.readers.normalization import mean_std

_DTYPES = {"int64": tf.int64, "float32": tf.float32, "string": tf.string}


def parse_spec(metadata: dict) -> dict:
    """FixedLenFeature for fixed shapes, VarLenFeature for variable-length ones (shape [null] in metadata.json)."""
    return {name: tf.io.VarLenFeature(_DTYPES[f["dtype"]]) if None in f["shape"] else
            tf.io.FixedLenFeature(f["shape"], _DTYPES[f["dtype"]]) for name, f in metadata["features"].items()}


def dataset(output: str, split: str, *, normalization: str = "imagenet", channels: int = 3,
            supervised: bool = False) -> tf.data.Dataset:
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
            return image, tf.cast(example["labels/binary"], tf.float32)
        return {**example, "image": image}

    compression = "GZIP" if metadata["config"]["compression"] == "gzip" else ""
    files = shard_files(folder, split, metadata)
    return tf.data.TFRecordDataset(files, compression_type=compression).map(
        decode, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
