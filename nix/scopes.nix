# The scopes an API token can carry, as niks3d's configuration names them (niks3d/config.py, `Scope`);
# tests/nix_module/test_render.py keeps the two lists equal.
[
  "read"
  "push"
  "pin"
  "gc"
  "metrics"
  "admin"
]
