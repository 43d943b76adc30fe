"""Lossless JSON for instances: ``loads(dumps(instance)) == instance``."""

from .core._json import check_json_safe as check_json_safe
from .core._serialization import dumps as dumps
from .core._serialization import from_dict as from_dict
from .core._serialization import loads as loads
from .core._serialization import make_converter as make_converter
from .core._serialization import to_dict as to_dict

__all__ = ["check_json_safe", "dumps", "from_dict", "loads", "make_converter", "to_dict"]
