"""The two files that let TensorFlow Datasets open the shards in place: ``features.json`` and ``dataset_info.json``
in ``tfrecords/``, so ``tfds.builder_from_directory(OUTPUT/tfrecords)`` works without TFDS on the workers.

Images are declared as TFDS ``Image`` features (decoded to uint8 [size, size, 1] by TFDS), everything else as plain
``Tensor``. The split file template points at our own shard names. TFDS reads uncompressed TFRecords only, so the
files are written only when --compression=none.
"""

from __future__ import annotations

from beam_pipeline import __version__, mimic

NAME = "mimic_cxr_ed"
FILE_TEMPLATE = "{SPLIT}-{SHARD_X_OF_Y}.tfrecord"
_TENSOR = "tensorflow_datasets.core.features.tensor_feature.Tensor"
_IMAGE = "tensorflow_datasets.core.features.image_feature.Image"


def _shape(dims) -> dict:
    """TFDS shape proto: -1 for a variable dimension (None in our spec)."""
    return {"dimensions": [str(-1 if d is None else d) for d in dims]} if dims else {}


def features_json(spec: dict, image_size: int, image_format: str) -> dict:
    """``spec`` is the metadata.json feature spec (dtype/shape per feature)."""
    features = {}
    for name, entry in spec.items():
        if name in ("image/encoded", "image/edge_map"):
            encoding = image_format if name == "image/encoded" else "png"
            features[name] = {"pythonClassName": _IMAGE,
                              "image": {"shape": _shape((image_size, image_size, 1)), "dtype": "uint8",
                                        "encodingFormat": encoding}}
        else:
            features[name] = {"pythonClassName": _TENSOR,
                              "tensor": {"shape": _shape(entry["shape"]), "dtype": entry["dtype"],
                                         "encoding": "none"}}
    return {"type": "tensorflow_datasets.core.features.features_dict.FeaturesDict",
            "content": {"features": features}, "proto_cls": "tensorflow_datasets.FeaturesDict"}


def dataset_info_json(files: list[dict], description: str) -> dict:
    """``files`` are the written TFRecord shards (group = split, shard index, records, bytes). A split without
    records is left out: TFDS cannot read a split listed with none ("corresponds to no data"), while one it does not
    list is simply not offered (the other readers read its empty shard as 0 records)."""
    splits = []
    for split in mimic.SPLITS:
        shards = sorted((f for f in files if f["group"] == split), key=lambda f: f["shard"])
        if not sum(f["records"] for f in shards):
            continue
        splits.append({"name": split, "shardLengths": [str(f["records"]) for f in shards],
                       "numBytes": str(sum(f["bytes"] for f in shards)), "filepathTemplate": FILE_TEMPLATE})
    return {"name": NAME, "version": __version__, "description": description, "fileFormat": "tfrecord",
            "moduleName": "beam_pipeline", "splits": splits}
