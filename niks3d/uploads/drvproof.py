"""What a pushed path's ``.drv`` proves: that its deriver built it, for the build log (docs/security.md, rule 3),
and which of its realisations are that derivation's (rule 7).

The ``.drv`` (``derivation``, sent with the path) must hash to the path's deriver (a text path,
niks3d/nix/derivation.py). Then

- an input-addressed or fixed-output derivation names its outputs' paths: the log is proven when one of them is
  the pushed path;
- a floating content-addressed derivation names none (its outputs are known only once built). Its log is proven by
  a realisation that this push publishes, signed by niks3d, binding one of its floating outputs to the pushed path:
  the build-trace entry ``build-trace-v2/<drv>/<output>.doi``, written from a Nix 2.35 store's ``build_trace``
  entry for that derivation or from a realisation whose id is that derivation's: ``sha256:<hash modulo>!<output>``
  with the hash modulo computed here from the ``.drv`` (niks3d/nix/drvhash.py). That entry is the *binding*: the
  log is accepted only if the binding is published for the pushed path (by this push, or already), checked again
  where the log is put in place (uploads/report.py) and at ``complete``.

A realisation whose id is the hash modulo of the path's deriver is the deriver's: only those get a build-trace
entry under the deriver (uploads/objects.py). The others (Nix also records one for the unresolved derivation the
user asked for, whose hash modulo needs its whole ``.drv`` closure) are still written under their own id.
"""

from __future__ import annotations

__all__ = ["DerivationProof", "prove_derivation"]

from dataclasses import dataclass

from niks3d.nix.bucketkeys import build_trace_key
from niks3d.nix.derivation import InvalidDerivation, parse_derivation, text_store_path
from niks3d.nix.drvhash import realisation_ids
from niks3d.nix.errors import NixFormatError
from niks3d.nix.storepath import StorePath


@dataclass(frozen=True, slots=True)
class DerivationProof:
    log_refused: str | None = None  # why the log is refused (None: proven, or no log asked for)
    log_binding: str | None = None  # the build-trace key that must name the path for its log to count
    deriver_ids: tuple[str, ...] = ()  # the ids of the path's realisations that are its deriver's, sorted


def prove_derivation(
    path: StorePath,
    deriver: StorePath | None,
    derivation: bytes | None,
    realisation_ids_sent: tuple[str, ...],
    build_trace: tuple[tuple[str, str], ...],
    *,
    log: bool,
) -> DerivationProof:
    """What ``derivation`` (the ``.drv`` sent for ``path``) proves; nothing when it is absent or not the deriver."""

    def refused(why: str) -> DerivationProof:
        return DerivationProof(log_refused=why if log else None)

    if deriver is None:
        return refused("a build log needs the path's deriver")
    if derivation is None:
        return refused(f"no proof: the log of {deriver.path} is accepted only with that .drv file (send 'derivation')")
    try:
        parsed = parse_derivation(derivation)
    except NixFormatError as exc:
        return refused(f"the derivation sent is not a .drv file: {exc}")
    actual = text_store_path(deriver.name, derivation, parsed.references())
    if actual != deriver:
        return refused(f"the derivation sent is not {deriver.path}: its contents hash to {actual.path}")
    ids: dict[str, str] = {}
    unhashed = ""
    if realisation_ids_sent:
        try:
            ids = realisation_ids(parsed, {})
        except InvalidDerivation as exc:  # an unresolved derivation: its inputs' .drv files are not sent
            unhashed = f" ({exc})"
    mine = tuple(sorted(i for i in realisation_ids_sent if i in ids.values()))
    if not log or path.path in parsed.outputs.values():
        return DerivationProof(deriver_ids=mine)
    floating = parsed.floating_outputs
    if not floating:
        return DerivationProof(f"{deriver.path} does not build {path.path} (not one of its outputs)", None, mine)
    for output in floating:
        if (deriver.basename, output) in build_trace or ids.get(output) in mine:
            return DerivationProof(None, build_trace_key(deriver.basename, output), mine)
    return DerivationProof(
        f"{deriver.path} is content-addressed (its outputs are known only once built): its log is accepted only "
        f"with a realisation of it naming {path.path} (sha256:<its hash modulo>!<output>, or a build trace entry), "
        f"and this push sends none{unhashed}",
        None,
        mine,
    )
