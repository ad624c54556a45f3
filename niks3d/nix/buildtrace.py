"""Build-trace entries: the realisations of Nix 2.35 and later (docs/protocol.md 4.4).

A build-trace entry says that output ``output_name`` of the (resolved) derivation ``drv_path`` was built to
``out_path``. Its bucket key is ``build-trace-v2/<drv basename>/<output>.doi`` and its body is compact JSON
with sorted keys and no id (the key is the id)::

    {"outPath":"<basename>","signatures":[{"keyName":"<name>","sig":"<base64>"}]}

A signature covers the keyed form without the signatures,
``{"key":{"drvPath":"<drv basename>","outputName":"<output>"},"value":{"outPath":"<basename>"}}``, compact
with sorted keys. Readers accept signatures written either as such objects or as ``"<name>:<base64>"``
strings. Here signatures are held as ``<name>:<base64>`` strings, like every other signature in niks3d.
"""

from __future__ import annotations

__all__ = ["BuildTraceEntry", "parse_build_trace_entry"]

import base64
import json
from collections.abc import Iterable
from dataclasses import dataclass, replace
from typing import Any

from niks3d.nix.errors import InvalidRealisation, InvalidSignature, InvalidStorePath
from niks3d.nix.signing import SecretKey, parse_signature, sign_replacing
from niks3d.nix.storepath import StorePath, validate_name

_BODY_KEYS = frozenset({"outPath", "signatures"})
_SIGNATURE_KEYS = frozenset({"keyName", "sig"})


def _basename(value: object, what: str) -> str:
    if not isinstance(value, str):
        raise InvalidRealisation(f"build trace {what} must be a string, got {type(value).__name__}")
    try:
        return StorePath.from_basename(value).basename
    except InvalidStorePath as exc:
        raise InvalidRealisation(f"build trace {what}: {exc}") from None


def _signature_text(value: object) -> str:
    """A signature of a body (an object or a ``name:base64`` string) as ``name:base64``."""
    if isinstance(value, dict):
        if set(value) != _SIGNATURE_KEYS or not all(isinstance(v, str) for v in value.values()):
            raise InvalidRealisation('a build trace signature object is {"keyName": <string>, "sig": <base64>}')
        value = f"{value['keyName']}:{value['sig']}"
    if not isinstance(value, str):
        raise InvalidRealisation(f"build trace signatures must be objects or strings, got {type(value).__name__}")
    try:
        parse_signature(value)
    except InvalidSignature as exc:
        raise InvalidRealisation(f"build trace signatures: {exc}") from None
    return value


def _signature_object(text: str) -> dict[str, str]:
    name, raw = parse_signature(text)
    return {"keyName": name, "sig": base64.b64encode(raw).decode("ascii")}


def _compact(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


@dataclass(frozen=True)
class BuildTraceEntry:
    """Output ``output_name`` of derivation ``drv_path`` (a ``.drv`` basename) built to ``out_path`` (a basename).

    ``signatures`` (``name:base64`` strings) are kept sorted and unique.
    """

    drv_path: str
    output_name: str
    out_path: str
    signatures: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        drv = _basename(self.drv_path, "drvPath")
        if not drv.endswith(".drv"):
            raise InvalidRealisation(f"build trace drvPath {drv!r} is not a derivation (.drv)")
        try:
            validate_name(self.output_name, "output name")
        except InvalidStorePath as exc:
            raise InvalidRealisation(f"build trace {exc}") from None
        _basename(self.out_path, "outPath")
        object.__setattr__(self, "signatures", tuple(sorted({_signature_text(s) for s in self.signatures})))

    def fingerprint(self) -> bytes:
        """What a signature covers: the keyed entry without its signatures, compact with sorted keys."""
        keyed = {
            "key": {"drvPath": self.drv_path, "outputName": self.output_name},
            "value": {"outPath": self.out_path},
        }
        return _compact(keyed).encode("utf-8")

    def to_json(self) -> str:
        """The ``.doi`` body as Nix 2.35 writes it."""
        body = {"outPath": self.out_path, "signatures": [_signature_object(s) for s in self.signatures]}
        return _compact(body)

    def signed(self, keys: Iterable[SecretKey]) -> BuildTraceEntry:
        """A copy signed by every key in ``keys``, replacing earlier signatures by the same key names."""
        return replace(self, signatures=sign_replacing(self.signatures, keys, self.fingerprint()))


def _reject_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    seen: dict[str, Any] = {}
    for key, value in pairs:
        if key in seen:
            raise InvalidRealisation(f"build trace JSON has the key {key!r} twice")
        seen[key] = value
    return seen


def parse_build_trace_entry(text: str | bytes, *, drv_path: str, output_name: str) -> BuildTraceEntry:
    """Parse a ``.doi`` body stored under ``build-trace-v2/<drv_path>/<output_name>.doi``."""
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise InvalidRealisation(f"build trace entry is not UTF-8: {exc}") from None
    try:
        body = json.loads(text, object_pairs_hook=_reject_duplicate_keys)
    except json.JSONDecodeError as exc:
        raise InvalidRealisation(f"build trace entry is not valid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise InvalidRealisation(f"build trace entry must be a JSON object, got {type(body).__name__}")
    unknown = sorted(set(body) - _BODY_KEYS)
    if unknown:
        raise InvalidRealisation(f"build trace entry has unexpected keys {unknown}; expected {sorted(_BODY_KEYS)}")
    if "outPath" not in body:
        raise InvalidRealisation("build trace entry has no 'outPath'")
    signatures = body.get("signatures", [])
    if not isinstance(signatures, list):
        raise InvalidRealisation("build trace entry 'signatures' must be a list")
    return BuildTraceEntry(drv_path, output_name, body["outPath"], tuple(signatures))
