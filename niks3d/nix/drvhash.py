"""A derivation's hash modulo: what names a content-addressed derivation's outputs in its realisations' ids.

A realisation id (``realisations/sha256:<hex>!<output>.doi``, docs/protocol.md 4.4) carries the derivation's hash
*modulo* its input derivations, the hash Nix computes instead of hashing the ``.drv`` file itself, so that
derivations that differ only in how a fixed output is fetched hash alike (docs/security.md, rule 7):

- a fixed-output derivation (every output has its hash in the ``.drv``): for each output,
  ``sha256("fixed:out:" + hash algorithm + ":" + base16 hash + ":" + output path)``;
- any other: ``sha256`` of the ``.drv``'s ATerm written again with each input derivation's path replaced by the
  base16 hash modulo of that input (its outputs' hash, computed unmasked; inputs of the same hash share one
  entry, their output names merged), the entries sorted by that hash; the same hash for every output.

The realisation's own id is computed *masked*: every output's path and every environment variable named like an
output are written as empty strings (the outputs are not known before the build). An input's hash is computed
unmasked. The ATerm is written as Nix writes it: strings in double quotes, with ``"``, ``\\``, newline, carriage
return and tab escaped.
"""

from __future__ import annotations

__all__ = ["derivation_hashes", "realisation_ids", "verified_hashes"]

import hashlib
from collections.abc import Mapping

from niks3d.nix.derivation import Derivation, InvalidDerivation, parse_derivation, text_store_path
from niks3d.nix.errors import NixFormatError
from niks3d.nix.storepath import StorePath

_ESCAPES = {ord('"'): '\\"', ord("\\"): "\\\\", ord("\n"): "\\n", ord("\r"): "\\r", ord("\t"): "\\t"}


def _str(text: str) -> str:
    return '"' + text.translate(_ESCAPES) + '"'


def _list(items: list[str]) -> str:
    return "[" + ",".join(items) + "]"


def _is_fixed(drv: Derivation) -> bool:
    return all(out.hash and out.hash != "impure" and out.path for _, out in drv.output_specs)


def derivation_hashes(drv: Derivation, inputs: Mapping[str, Mapping[str, bytes]], *, masked: bool) -> dict[str, bytes]:
    """The hash modulo of ``drv`` for each of its outputs (32 bytes each), given the unmasked hashes of its
    input derivations (``inputs``: input .drv path -> output name -> hash); raises InvalidDerivation for an input
    that is missing from ``inputs`` or lacks an output ``drv`` uses."""
    if _is_fixed(drv):
        return {
            name: hashlib.sha256(f"fixed:out:{out.hash_algo}:{out.hash}:{out.path}".encode()).digest()
            for name, out in drv.output_specs
        }
    merged: dict[str, set[str]] = {}
    for path, names in drv.input_outputs:
        hashes = inputs.get(path)
        if hashes is None:
            raise InvalidDerivation(f"the hash modulo needs the input derivation {path}")
        for name in names:
            if name not in hashes:
                raise InvalidDerivation(f"the input derivation {path} has no output {name!r}")
            merged.setdefault(hashes[name].hex(), set()).add(name)
    own = {name for name, _ in drv.output_specs}
    outputs = [
        f"({_str(name)},{_str('' if masked else out.path)},{_str(out.hash_algo)},{_str(out.hash)})"
        for name, out in drv.output_specs
    ]
    input_drvs = [f"({_str(h)},{_list([_str(o) for o in sorted(merged[h])])})" for h in sorted(merged)]
    env = [f"({_str(k)},{_str('' if masked and k in own else v)})" for k, v in drv.env]
    aterm = (
        f"Derive({_list(outputs)},{_list(input_drvs)},{_list([_str(s) for s in drv.input_srcs])},"
        f"{_str(drv.system)},{_str(drv.builder)},{_list([_str(a) for a in drv.args])},{_list(env)})"
    )
    digest = hashlib.sha256(aterm.encode("utf-8", errors="surrogateescape")).digest()
    return dict.fromkeys(own, digest)


def realisation_ids(drv: Derivation, inputs: Mapping[str, Mapping[str, bytes]]) -> dict[str, str]:
    """Output name -> the id of its realisation, ``sha256:<base16 masked hash modulo>!<output>``."""
    return {name: f"sha256:{h.hex()}!{name}" for name, h in derivation_hashes(drv, inputs, masked=True).items()}


def verified_hashes(files: Mapping[str, bytes], limit: int = 4096) -> dict[str, dict[str, bytes]]:
    """The unmasked hash modulo of every ``.drv`` in ``files`` (store path -> contents), each checked to be the
    derivation its path names (a text path, niks3d/nix/derivation.py) and every input of each among ``files``;
    raises InvalidDerivation naming the first that is not."""
    if len(files) > limit:
        raise InvalidDerivation(f"{len(files)} derivations, more than {limit}")
    parsed: dict[str, Derivation] = {}
    for path, contents in files.items():
        try:
            drv_path = StorePath.parse(path)
            drv = parse_derivation(contents)
        except NixFormatError as exc:
            raise InvalidDerivation(f"{path[:200]}: {exc}") from None
        actual = text_store_path(drv_path.name, contents, drv.references())
        if actual != drv_path:
            raise InvalidDerivation(f"the contents sent for {path} hash to {actual.path}")
        parsed[path] = drv
    done: dict[str, dict[str, bytes]] = {}
    for root in sorted(parsed):
        stack = [root]  # depth first without recursion: a .drv closure can be thousands deep
        while stack:
            path = stack[-1]
            if path in done:
                stack.pop()
                continue
            missing = [p for p in parsed[path].input_drvs if p not in done]
            if not missing:
                done[path] = derivation_hashes(parsed[path], done, masked=False)
                stack.pop()
                continue
            for p in missing:
                if p not in parsed:
                    raise InvalidDerivation(f"the hash modulo of {path} needs the input derivation {p}")
                if p in stack:
                    raise InvalidDerivation(f"{p} is its own input")
            stack.extend(missing)
    return done
