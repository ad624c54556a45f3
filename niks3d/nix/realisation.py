"""CA-derivation realisations: the ``.doi`` files of Nix 2.8 to 2.34 (docs/protocol.md 4.4).

A realisation id is ``sha256:<base16 hash modulo of the derivation>!<output name>``; its body is compact JSON
with sorted keys, ``{"dependentRealisations":{<id>:<basename>},"id":…,"outPath":…,"signatures":[…]}``.
Signatures cover the same JSON without ``signatures``.
"""

from __future__ import annotations

__all__ = ["Realisation", "parse_realisation", "parse_realisation_id"]

import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Any

from niks3d.nix.errors import InvalidRealisation, InvalidSignature, InvalidStorePath, quote
from niks3d.nix.signing import SecretKey, parse_signature, sign_replacing
from niks3d.nix.storepath import StorePath, validate_name

_ID_RE = re.compile(r"sha256:([0-9a-f]{64})!(.*)", re.DOTALL)
_KEYS = frozenset({"dependentRealisations", "id", "outPath", "signatures"})


def parse_realisation_id(text: str) -> tuple[str, str]:
    """Split ``sha256:<hex64>!<output>`` into ``(hex digest, output name)``; raises InvalidRealisation."""
    if not isinstance(text, str):
        raise InvalidRealisation(f"realisation id must be a string, got {type(text).__name__}")
    match = _ID_RE.fullmatch(text)
    if match is None:
        raise InvalidRealisation(
            f"realisation id {quote(text)} is not 'sha256:<64 lowercase hex digits>!<output name>'"
        )
    try:
        validate_name(match[2], "output name")
    except InvalidStorePath as exc:
        raise InvalidRealisation(f"realisation id {quote(text)}: {exc}") from None
    return match[1], match[2]


def _basename(value: object, what: str) -> str:
    if not isinstance(value, str):
        raise InvalidRealisation(f"realisation {what} must be a string, got {type(value).__name__}")
    try:
        return StorePath.from_basename(value).basename
    except InvalidStorePath as exc:
        raise InvalidRealisation(f"realisation {what}: {exc}") from None


def _signature(value: object) -> str:
    if not isinstance(value, str):
        raise InvalidRealisation(f"realisation signatures must be strings, got {type(value).__name__}")
    try:
        parse_signature(value)
    except InvalidSignature as exc:
        raise InvalidRealisation(f"realisation signatures: {exc}") from None
    return value


@dataclass(frozen=True)
class Realisation:
    """One realisation: derivation output ``id`` built to ``out_path`` (a basename), with signatures.

    ``signatures`` and ``dependent_realisations`` (pairs of id and out-path basename) are kept sorted and
    unique, as Nix keeps them in ordered sets and maps.
    """

    id: str
    out_path: str
    signatures: tuple[str, ...] = ()
    dependent_realisations: tuple[tuple[str, str], ...] = ()

    def __post_init__(self) -> None:
        parse_realisation_id(self.id)
        _basename(self.out_path, "outPath")
        sigs = tuple(sorted({_signature(sig) for sig in self.signatures}))
        deps: dict[str, str] = {}
        for dep_id, dep_path in self.dependent_realisations:
            try:
                parse_realisation_id(dep_id)
            except InvalidRealisation as exc:
                raise InvalidRealisation(f"realisation dependentRealisations: {exc}") from None
            if deps.setdefault(dep_id, _basename(dep_path, f"dependentRealisations[{dep_id!r}]")) != dep_path:
                raise InvalidRealisation(f"realisation dependency {dep_id!r} is given twice with different paths")
        object.__setattr__(self, "signatures", sigs)
        object.__setattr__(self, "dependent_realisations", tuple(sorted(deps.items())))

    @property
    def drv_hash(self) -> str:
        """The derivation's hash modulo, as 64 lowercase hex digits."""
        return parse_realisation_id(self.id)[0]

    @property
    def output_name(self) -> str:
        """The output name, e.g. ``out``."""
        return parse_realisation_id(self.id)[1]

    def _json_object(self, *, with_signatures: bool) -> dict[str, Any]:
        body: dict[str, Any] = {
            "dependentRealisations": dict(self.dependent_realisations),
            "id": self.id,
            "outPath": self.out_path,
        }
        if with_signatures:
            body["signatures"] = list(self.signatures)
        return body

    def to_json(self) -> str:
        """The ``.doi`` body as Nix writes it: compact JSON with sorted keys."""
        return json.dumps(self._json_object(with_signatures=True), sort_keys=True, separators=(",", ":"))

    def fingerprint(self) -> bytes:
        """What a realisation signature covers: the JSON without ``signatures``."""
        text = json.dumps(self._json_object(with_signatures=False), sort_keys=True, separators=(",", ":"))
        return text.encode("utf-8")

    def signed(self, keys: Iterable[SecretKey]) -> Realisation:
        """A copy signed by every key in ``keys``, replacing earlier signatures by the same key names."""
        return replace(self, signatures=sign_replacing(self.signatures, keys, self.fingerprint()))


def _reject_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    seen: dict[str, Any] = {}
    for key, value in pairs:
        if key in seen:
            raise InvalidRealisation(f"realisation JSON has the key {key!r} twice")
        seen[key] = value
    return seen


def parse_realisation(text: str | bytes, *, expected_id: str | None = None) -> Realisation:
    """Parse and validate a ``.doi`` body; ``expected_id`` (from the bucket key) must equal its ``id``."""
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise InvalidRealisation(f"realisation is not UTF-8: {exc}") from None
    try:
        body = json.loads(text, object_pairs_hook=_reject_duplicate_keys)
    except json.JSONDecodeError as exc:
        raise InvalidRealisation(f"realisation is not valid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise InvalidRealisation(f"realisation must be a JSON object, got {type(body).__name__}")
    unknown = sorted(set(body) - _KEYS)
    if unknown:
        raise InvalidRealisation(f"realisation has unexpected keys {unknown}; expected {sorted(_KEYS)}")
    for required in ("id", "outPath"):
        if required not in body:
            raise InvalidRealisation(f"realisation has no {required!r}")
    if not isinstance(body["id"], str):
        raise InvalidRealisation(f"realisation id must be a string, got {type(body['id']).__name__}")
    if expected_id is not None and body["id"] != expected_id:
        raise InvalidRealisation(f"realisation id {quote(body['id'])} does not match its key's id {expected_id!r}")
    signatures = body.get("signatures", [])
    if not isinstance(signatures, list):
        raise InvalidRealisation("realisation 'signatures' must be a list")
    deps = body.get("dependentRealisations", {})
    if not isinstance(deps, Mapping):
        raise InvalidRealisation("realisation 'dependentRealisations' must be an object")
    return Realisation(
        id=body["id"],
        out_path=body["outPath"],
        signatures=tuple(signatures),
        dependent_realisations=tuple(deps.items()),
    )
