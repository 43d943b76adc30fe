"""Lossless JSON for instances: ``loads(dumps(instance)) == instance``."""

from .core._json import check_json_safe as check_json_safe
from .core._serialization import INSTANCE_FIELDS as INSTANCE_FIELDS
from .core._serialization import apply_fields as apply_fields
from .core._serialization import dumps as dumps
from .core._serialization import fields_to_dict as fields_to_dict
from .core._serialization import from_dict as from_dict
from .core._serialization import loads as loads
from .core._serialization import make_converter as make_converter
from .core._serialization import to_dict as to_dict

__all__ = [
    "INSTANCE_FIELDS",
    "apply_fields",
    "check_json_safe",
    "dumps",
    "fields_to_dict",
    "from_dict",
    "loads",
    "make_converter",
    "to_dict",
]
