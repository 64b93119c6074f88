"""The DataRecord Thrift schema, loaded with thriftpy2 from the IDL shipped in the package.

The IDL lives in the repository's top-level ``thrift/`` directory; the wheel and sdist carry it
as ``twml/idl/*.thrift``. We look there first (an installed package) and then in the source
tree, so loading works from any working directory. Modules are registered in ``sys.modules``
under ``*_thrift`` names, which is what lets thriftpy2 objects pickle (Beam ships them).

``serialize`` / ``deserialize`` use thriftpy2's C binary protocol (about 20x the pure-Python
one that ``thriftpy2.utils.serialize`` picks by default).
"""
from __future__ import annotations

import functools
from pathlib import Path
from types import ModuleType
from typing import Any, Type, TypeVar

import thriftpy2
from thriftpy2.protocol.cybin import TCyBinaryProtocolFactory
from thriftpy2.transport import TMemoryBuffer

__all__ = ["idl_dir", "data_thrift", "tensor_thrift", "prediction_service_thrift",
           "serialize", "deserialize"]

_IDL_FILES = ("tensor.thrift", "data.thrift", "prediction_service.thrift")


@functools.lru_cache(maxsize=None)
def idl_dir() -> Path:
    """The directory holding the shipped ``*.thrift`` files."""
    here = Path(__file__).resolve().parent
    for candidate in (here / "idl", here.parent / "thrift"):
        if all((candidate / name).is_file() for name in _IDL_FILES):
            return candidate
    raise FileNotFoundError(
        f"twml IDL files {_IDL_FILES} not found in {here / 'idl'} or {here.parent / 'thrift'}; "
        "the package was built without its thrift/ data")


def _load(name: str) -> ModuleType:
    directory = idl_dir()
    return thriftpy2.load(str(directory / f"{name}.thrift"), module_name=f"{name}_thrift",
                          include_dirs=[str(directory)])


tensor_thrift = _load("tensor")
data_thrift = _load("data")
prediction_service_thrift = _load("prediction_service")

_PROTOCOL = TCyBinaryProtocolFactory()
T = TypeVar("T")


def serialize(obj: Any) -> bytes:
    """Thrift binary (C protocol) bytes of a thriftpy2 struct."""
    buf = TMemoryBuffer()
    obj.write(_PROTOCOL.get_protocol(buf))
    return buf.getvalue()


def deserialize(cls: Type[T], data: bytes) -> T:
    """Parse ``data`` as one ``cls`` with the C binary protocol (no validation of sizes)."""
    obj = cls()
    obj.read(_PROTOCOL.get_protocol(TMemoryBuffer(data)))
    return obj
