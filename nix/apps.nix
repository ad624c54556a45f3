# The flake's apps and formatter, which wrap niks3d and the linters for `nix run` and `nix fmt`.
{
  lib,
  writeShellApplication,
  niks3d,
  postgresql,
  seaweedfs,
  nixfmt,
  ruff,
}:
{
  # `nix run .#dev`: `niks3d dev`, with the PostgreSQL and SeaweedFS binaries it starts on its PATH.
  dev = {
    type = "app";
    program = lib.getExe (writeShellApplication {
      name = "niks3d-dev";
      runtimeInputs = [
        niks3d
        postgresql
        seaweedfs
      ];
      text = ''exec niks3d dev "$@"'';
    });
    meta.description = "Run a throwaway PostgreSQL, S3 server and niks3d to try niks3d out";
  };

  # `nix fmt [FILE...]`: nixfmt for Nix files, ruff for Python; the whole tree without arguments.
  formatter = writeShellApplication {
    name = "niks3d-fmt";
    runtimeInputs = [
      nixfmt
      ruff
    ];
    text = ''
      if [ "$#" -eq 0 ]; then
        find . \( -name .git -o -name .venv \) -prune -o -name '*.nix' -type f -print0 | xargs -0 nixfmt
        ruff format .
      else
        for file in "$@"; do
          case "$file" in
            *.nix) nixfmt "$file" ;;
            *.py) ruff format "$file" ;;
          esac
        done
      fi
    '';
  };
}
