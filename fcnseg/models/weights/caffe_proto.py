"""The subset of ``caffe.proto`` a ``.caffemodel`` needs, as message classes built at runtime.

Field numbers follow BVLC Caffe's ``src/caffe/proto/caffe.proto``. ``V1LayerParameter.type``
is the legacy ``LayerType`` enum, declared here as int32 (same varint on the wire). The
classes live in a private descriptor pool so they never clash with a real ``caffe_pb2``.
"""
from __future__ import annotations

from functools import lru_cache
from types import SimpleNamespace

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

__all__ = ["caffe_messages", "V1_TYPES"]

_F = descriptor_pb2.FieldDescriptorProto
_OPT, _REP = _F.LABEL_OPTIONAL, _F.LABEL_REPEATED
_PACKAGE = "caffe"

# message → fields (name, number, type, label, message type or None, packed)
_SCHEMA = {
    "BlobShape": [("dim", 1, _F.TYPE_INT64, _REP, None, True)],
    "BlobProto": [
        ("num", 1, _F.TYPE_INT32, _OPT, None, False),
        ("channels", 2, _F.TYPE_INT32, _OPT, None, False),
        ("height", 3, _F.TYPE_INT32, _OPT, None, False),
        ("width", 4, _F.TYPE_INT32, _OPT, None, False),
        ("data", 5, _F.TYPE_FLOAT, _REP, None, True),
        ("diff", 6, _F.TYPE_FLOAT, _REP, None, True),
        ("shape", 7, _F.TYPE_MESSAGE, _OPT, "BlobShape", False),
        ("double_data", 8, _F.TYPE_DOUBLE, _REP, None, True),
    ],
    "LayerParameter": [
        ("name", 1, _F.TYPE_STRING, _OPT, None, False),
        ("type", 2, _F.TYPE_STRING, _OPT, None, False),
        ("blobs", 7, _F.TYPE_MESSAGE, _REP, "BlobProto", False),
    ],
    "V0LayerParameter": [  # pre-2014 files: only read to recognise them
        ("name", 1, _F.TYPE_STRING, _OPT, None, False),
        ("type", 2, _F.TYPE_STRING, _OPT, None, False),
        ("blobs", 50, _F.TYPE_MESSAGE, _REP, "BlobProto", False),
    ],
    "V1LayerParameter": [
        ("layer", 1, _F.TYPE_MESSAGE, _OPT, "V0LayerParameter", False),
        ("name", 4, _F.TYPE_STRING, _OPT, None, False),
        ("type", 5, _F.TYPE_INT32, _OPT, None, False),
        ("blobs", 6, _F.TYPE_MESSAGE, _REP, "BlobProto", False),
    ],
    "NetParameter": [
        ("name", 1, _F.TYPE_STRING, _OPT, None, False),
        ("layers", 2, _F.TYPE_MESSAGE, _REP, "V1LayerParameter", False),
        ("layer", 100, _F.TYPE_MESSAGE, _REP, "LayerParameter", False),
    ],
}

# V1LayerParameter.LayerType numbers of the layers that carry weights.
V1_TYPES = {"Convolution": 4, "InnerProduct": 14, "Deconvolution": 39}


@lru_cache(maxsize=1)
def caffe_messages() -> SimpleNamespace:
    """Message classes ``NetParameter``, ``LayerParameter``, ``V1LayerParameter``, ``V0LayerParameter``,
    ``BlobProto``, ``BlobShape``."""
    fd = descriptor_pb2.FileDescriptorProto(name="fcnseg_caffe_subset.proto", package=_PACKAGE, syntax="proto2")
    for msg_name, fields in _SCHEMA.items():
        msg = fd.message_type.add(name=msg_name)
        for name, number, ftype, label, type_name, packed in fields:
            f = msg.field.add(name=name, number=number, type=ftype, label=label)
            if type_name:
                f.type_name = f".{_PACKAGE}.{type_name}"
            if packed:
                f.options.packed = True
    pool = descriptor_pool.DescriptorPool()
    pool.Add(fd)
    return SimpleNamespace(**{n: _message_class(pool.FindMessageTypeByName(f"{_PACKAGE}.{n}")) for n in _SCHEMA})


def _message_class(desc):
    get = getattr(message_factory, "GetMessageClass", None)  # protobuf >= 4.21
    return get(desc) if get else message_factory.MessageFactory(desc.file.pool).GetPrototype(desc)
