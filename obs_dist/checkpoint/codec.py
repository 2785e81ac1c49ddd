"""Nested state dictionaries as safetensors + JSON: no pickle, ever.

A checkpoint must never unpickle bytes read from a bucket (DESIGN §6), yet the
state it holds is nested Python data: an optimizer's ``state_dict()`` has int
keys, tuples (``betas``), floats, ``None`` and tensors. :func:`encode_tree`
splits such a tree into

* a JSON document in which every tensor is replaced by a reference
  ``{"__tensor__": name}``, tuples by ``{"__tuple__": [...]}`` and dictionaries
  with non-string keys by ``{"__items__": [[key, value], ...]}``, and
* a flat ``{name: tensor}`` mapping written as one safetensors object,

and :func:`decode_tree` puts them back together. Python floats survive JSON
exactly (``repr`` round-trips), so a decoded tree equals the original bit for
bit. Anything else (arbitrary objects, functions) is refused with a message
naming its path: such state has to be converted by its owner first.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

TENSOR = "__tensor__"
NUMPY = "__numpy__"
TUPLE = "__tuple__"
ITEMS = "__items__"
DTYPE = "__dtype__"
OBJECT = "__object__"
_MARKERS = (TENSOR, NUMPY, TUPLE, ITEMS, DTYPE, OBJECT)

# Classes whose instances are plain bags of attributes (e.g. DeepSpeed's
# LossScaler inside a ZeRO optimizer state): stored as their attribute dict and
# rebuilt only if the class is registered here, so a store can never name an
# arbitrary class to instantiate.
_PLAIN_CLASSES: dict[str, type] = {}


def _class_name(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def register_plain_class(cls: type) -> None:
    """Allow instances of ``cls`` in checkpoints, stored as their ``__dict__``.

    Only for classes whose state is their attributes (numbers, strings, tensors,
    containers of those); decoding rebuilds them without calling ``__init__``.
    """
    _PLAIN_CLASSES[_class_name(cls)] = cls


def _is_plain_key(key: Any) -> bool:
    return isinstance(key, str) and key not in _MARKERS


def encode_tree(tree: Any, prefix: str = "") -> tuple[Any, dict[str, torch.Tensor]]:
    """Split a nested structure into a JSON-able document and its tensors.

    Args:
        tree: dicts, lists, tuples, tensors, numpy arrays/scalars, str, int,
            float, bool and None, nested in any way.
        prefix: prepended to tensor names (keeps names unique across trees).

    Returns:
        ``(document, tensors)``; tensors are detached, contiguous CPU copies.

    Raises:
        ValueError: naming the path of a value that cannot be stored without pickle.
    """
    tensors: dict[str, torch.Tensor] = {}

    def walk(node: Any, path: str) -> Any:
        if isinstance(node, torch.Tensor):
            name = path or "tensor"
            # A copy: safetensors refuses tensors that share storage, and the
            # caller may keep training while the bytes are being written.
            tensors[name] = node.detach().to("cpu", copy=True).contiguous()
            return {TENSOR: name}
        if isinstance(node, np.ndarray):
            name = path or "array"
            tensors[name] = torch.from_numpy(np.ascontiguousarray(node).copy())
            return {NUMPY: name}
        if isinstance(node, np.generic):
            return node.item()
        if node is None or isinstance(node, (bool, int, float, str)):
            return node
        if isinstance(node, torch.dtype):
            return {DTYPE: str(node).removeprefix("torch.")}
        if _class_name(type(node)) in _PLAIN_CLASSES and hasattr(node, "__dict__"):
            return {OBJECT: _class_name(type(node)), "fields": walk(dict(vars(node)), path)}
        if isinstance(node, Mapping):
            if all(_is_plain_key(k) for k in node):
                return {k: walk(v, f"{path}/{k}" if path else k) for k, v in node.items()}
            items = []
            for k, v in node.items():
                if not (k is None or isinstance(k, (bool, int, float, str))):
                    raise ValueError(f"cannot store the key {k!r} at {path or '<root>'}: "
                                     "only str/int/float/bool/None keys are supported")
                items.append([k, walk(v, f"{path}/{k}" if path else str(k))])
            return {ITEMS: items}
        if isinstance(node, tuple):
            return {TUPLE: [walk(v, f"{path}/{i}") for i, v in enumerate(node)]}
        if isinstance(node, list):
            return [walk(v, f"{path}/{i}") for i, v in enumerate(node)]
        raise ValueError(f"cannot store {type(node).__name__} at {path or '<root>'} without "
                         "pickle: convert it to tensors, numbers, strings, lists or dicts "
                         "(or register_plain_class it if it is a bag of such attributes)")

    document = walk(tree, prefix)
    return document, tensors


def decode_tree(document: Any, tensors: Mapping[str, torch.Tensor]) -> Any:
    """Inverse of :func:`encode_tree`.

    Raises:
        ValueError: if the document refers to a tensor that is not in ``tensors``.
    """

    def tensor(name: str) -> torch.Tensor:
        if name not in tensors:
            raise ValueError(f"checkpoint document refers to a missing tensor {name!r}")
        return tensors[name]

    def walk(node: Any) -> Any:
        if isinstance(node, list):
            return [walk(v) for v in node]
        if not isinstance(node, dict):
            return node
        if OBJECT in node and set(node) == {OBJECT, "fields"}:
            return plain_object(node[OBJECT], walk(node["fields"]))
        if len(node) == 1:
            (key, value), = node.items()
            if key == TENSOR:
                return tensor(value)
            if key == NUMPY:
                return tensor(value).numpy()
            if key == TUPLE:
                return tuple(walk(v) for v in value)
            if key == ITEMS:
                return {k: walk(v) for k, v in value}
            if key == DTYPE:
                dtype = getattr(torch, str(value), None)
                if not isinstance(dtype, torch.dtype):
                    raise ValueError(f"checkpoint document names an unknown dtype {value!r}")
                return dtype
        return {k: walk(v) for k, v in node.items()}

    return walk(document)


def plain_object(name: str, fields: Any) -> Any:
    """Rebuild an instance of a registered plain class from its attributes.

    Raises:
        ValueError: the class is not registered (it is never imported by name).
    """
    cls = _PLAIN_CLASSES.get(name)
    if cls is None:
        raise ValueError(f"checkpoint holds an object of class {name}, which is not registered "
                         "(register_plain_class) in this process")
    if not isinstance(fields, dict):
        raise ValueError(f"checkpoint object of class {name} has no attribute table")
    obj: Any = object.__new__(cls)
    obj.__dict__.update(fields)
    return obj


def tensors_to_bytes(tensors: Mapping[str, torch.Tensor],
                     metadata: dict[str, str] | None = None) -> bytes:
    """Serialize tensors as one safetensors blob."""
    return st_save(dict(tensors), metadata=metadata)


def bytes_to_tensors(data: bytes, what: str) -> dict[str, torch.Tensor]:
    """Parse a safetensors blob; ``what`` names it if the bytes are not valid.

    Raises:
        ValueError: the bytes are not a safetensors file.
    """
    try:
        return st_load(data)
    except Exception as exc:  # safetensors raises its own error types
        raise ValueError(f"{what} is not a valid safetensors object: {exc}") from exc


def json_bytes(document: Any) -> bytes:
    """Canonical JSON (sorted keys, compact) as UTF-8 bytes."""
    return json.dumps(document, sort_keys=True, separators=(",", ":")).encode()


def parse_json(data: bytes, what: str) -> Any:
    """Parse JSON bytes; ``what`` names the object in the error.

    Raises:
        ValueError: the bytes are not valid UTF-8 JSON.
    """
    try:
        return json.loads(data.decode())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{what} is not valid JSON: {exc}") from exc


def sha256_hex(data: bytes) -> str:
    """Hex SHA-256 of ``data``."""
    return hashlib.sha256(data).hexdigest()


def encode_to_objects(tree: Any) -> tuple[bytes, bytes]:
    """A tree as ``(json_bytes, safetensors_bytes)`` ready to store."""
    document, tensors = encode_tree(tree)
    return json_bytes(document), tensors_to_bytes(tensors)


def decode_from_objects(document_bytes: bytes, tensor_bytes: bytes, what: str) -> Any:
    """Inverse of :func:`encode_to_objects`; ``what`` names the objects in errors."""
    document = parse_json(document_bytes, f"{what} (JSON)")
    tensors = bytes_to_tensors(tensor_bytes, f"{what} (tensors)")
    return decode_tree(document, tensors)
