"""Helpers for the tests and the benchmarks, kept out of the runtime package ``niks3d`` (nothing installed or
shipped imports them): :mod:`testkit.nixfixtures` builds Nix store paths with Debian's Nix, and
:mod:`testkit.proctree` walks a process tree for CPU figures. ``pytest`` finds this package through its
``pythonpath``; the benchmarks run from the repository's root as ``python -m bench.<name>``."""
