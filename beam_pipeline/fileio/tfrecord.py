"""tf.train.Example and TFRecord framing without importing TensorFlow on workers.

The Example messages are declared here with the same package, names and field numbers as TensorFlow's
``example.proto``/``feature.proto`` (a private descriptor pool, so it never clashes with TF's own when both are
loaded). Serialisation is deterministic (map keys sorted). Framing follows the TFRecord format: little-endian uint64
length, masked CRC32C of the length, data, masked CRC32C of the data.
"""

from __future__ import annotations

import struct
from typing import Any, Iterable, Iterator, Mapping

import google_crc32c
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

BYTES, FLOAT, INT64 = "bytes", "float", "int64"
_F = descriptor_pb2.FieldDescriptorProto


def _message_classes():
    proto = descriptor_pb2.FileDescriptorProto(name="beam_pipeline/example.proto", package="tensorflow",
                                               syntax="proto3")

    def message(name, fields, nested=(), oneofs=()):
        msg = proto.message_type.add(name=name)
        msg.nested_type.extend(nested)
        for oneof in oneofs:
            msg.oneof_decl.add(name=oneof)
        for number, (field_name, type_, label, type_name, oneof_index) in enumerate(fields, start=1):
            field = msg.field.add(name=field_name, number=number, type=type_, label=label)
            if type_name:
                field.type_name = type_name
            if oneof_index is not None:
                field.oneof_index = oneof_index
        return msg

    rep, opt = _F.LABEL_REPEATED, _F.LABEL_OPTIONAL
    message("BytesList", [("value", _F.TYPE_BYTES, rep, None, None)])
    message("FloatList", [("value", _F.TYPE_FLOAT, rep, None, None)])
    message("Int64List", [("value", _F.TYPE_INT64, rep, None, None)])
    message("Feature", [("bytes_list", _F.TYPE_MESSAGE, opt, ".tensorflow.BytesList", 0),
                        ("float_list", _F.TYPE_MESSAGE, opt, ".tensorflow.FloatList", 0),
                        ("int64_list", _F.TYPE_MESSAGE, opt, ".tensorflow.Int64List", 0)], oneofs=["kind"])
    entry = descriptor_pb2.DescriptorProto(name="FeatureEntry", options=descriptor_pb2.MessageOptions(map_entry=True))
    entry.field.add(name="key", number=1, type=_F.TYPE_STRING, label=opt)
    entry.field.add(name="value", number=2, type=_F.TYPE_MESSAGE, label=opt, type_name=".tensorflow.Feature")
    message("Features", [("feature", _F.TYPE_MESSAGE, rep, ".tensorflow.Features.FeatureEntry", None)],
            nested=[entry])
    message("Example", [("features", _F.TYPE_MESSAGE, opt, ".tensorflow.Features", None)])
    pool = descriptor_pool.DescriptorPool()
    pool.Add(proto)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("tensorflow.Example"))


Example = _message_classes()
_LIST_FIELD = {BYTES: "bytes_list", FLOAT: "float_list", INT64: "int64_list"}


class FeatureError(ValueError):
    """A value its feature's list cannot hold (an int beyond int64, a str in a float list): that one record cannot be
    written, which the shard writer makes a reject instead of failing the job."""


def serialize_example(features: Mapping[str, tuple[str, Iterable[Any]]]) -> bytes:
    """{name: (kind, values)} -> serialized tf.train.Example; kind is BYTES, FLOAT or INT64. Raises FeatureError
    naming the feature (and the number, for a range error: a type error's message may quote free text)."""
    example = Example()
    for name, (kind, values) in features.items():
        try:
            getattr(example.features.feature[name], _LIST_FIELD[kind]).value.extend(values)
        except (ValueError, TypeError, OverflowError) as err:
            problem = type(err).__name__ if isinstance(err, TypeError) else f"{type(err).__name__}: {err}"
            raise FeatureError(f"feature {name} ({kind}): {problem}") from None
    return example.SerializeToString(deterministic=True)


def parse_example(data: bytes) -> dict[str, list[Any]]:
    """Serialized Example -> {name: list of values} (for tests and inspection without TensorFlow)."""
    example = Example.FromString(data)
    return {name: list(getattr(feature, feature.WhichOneof("kind")).value) if feature.WhichOneof("kind") else []
            for name, feature in example.features.feature.items()}


def _masked_crc(data: bytes) -> bytes:
    crc = google_crc32c.value(data)
    return struct.pack("<I", (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF)


def frame(record: bytes) -> bytes:
    """One TFRecord: length, CRC of length, data, CRC of data."""
    length = struct.pack("<Q", len(record))
    return length + _masked_crc(length) + record + _masked_crc(record)


class CorruptRecordError(ValueError):
    pass


def read_records(path: str) -> Iterator[bytes]:
    """Records of one TFRecord file (local or gs://; .gz is decompressed), CRCs verified."""
    with FileSystems.open(path, compression_type=CompressionTypes.AUTO) as f:
        while header := f.read(12):
            if len(header) < 12 or _masked_crc(header[:8]) != header[8:]:
                raise CorruptRecordError(f"{path}: corrupt record header")
            (length,) = struct.unpack("<Q", header[:8])
            data, crc = f.read(length), f.read(4)
            if len(data) < length or _masked_crc(data) != crc:
                raise CorruptRecordError(f"{path}: corrupt record data")
            yield data
