"""Package names that load on first use (PEP 562), for ``twml`` and ``twml.io``.

    __getattr__, __dir__, __all__ = lazy_exports(__name__, globals(), {"pkg.module": ("name", ...)})

A package whose ``__init__`` imports nothing eagerly can have a submodule imported on its own
(``twml.dataset`` without thriftpy2; ``twml.io.crc32c_batch``, which the encoder uses, without the
containers, which import the encoder).
"""
from __future__ import annotations

import importlib
from typing import Any, Callable, Dict, List, Sequence, Tuple

__all__ = ["lazy_exports"]


def lazy_exports(package: str, namespace: Dict[str, Any], exports: Dict[str, Sequence[str]]
                 ) -> Tuple[Callable[[str], Any], Callable[[], List[str]], List[str]]:
    """The package's ``__getattr__``, ``__dir__`` and ``__all__`` for ``exports`` ({module: names}):
    a name is imported from its module when first asked for, then kept in ``namespace``."""
    where = {name: module for module, names in exports.items() for name in names}

    def __getattr__(name: str) -> Any:
        module = where.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(module), name)
        namespace[name] = value
        return value

    def __dir__() -> List[str]:
        return sorted(set(namespace) | set(where))

    return __getattr__, __dir__, sorted(where)
