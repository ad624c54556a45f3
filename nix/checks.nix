# `nix flake check`: every package and dev shell, every VM test in ./tests (found with readDir), the Python
# test suite, the linters, and the module evaluated against each scenario of ./eval-scenarios.nix.
{ self, pkgs }:
let
  inherit (pkgs) lib;
  fs = lib.fileset;
  system = pkgs.stdenv.hostPlatform.system;
  niks3d = self.packages.${system}.default;

  sourceOf =
    extensions: root:
    fs.fileFilter (file: lib.any file.hasExt extensions || file.name == "pyproject.toml") root;

  # Each regular *.nix file in ./tests is one VM scenario; helpers live in ./tests/lib.
  vmTestFiles = lib.filterAttrs (name: type: type == "regular" && lib.hasSuffix ".nix" name) (
    builtins.readDir ./tests
  );
  vmTest = name: import (./tests + "/${name}") { inherit pkgs self; };
  vmTests = lib.mapAttrs' (
    name: _: lib.nameValuePair "vm-${lib.removeSuffix ".nix" name}" (vmTest name)
  ) vmTestFiles;

  packages = lib.mapAttrs' (name: lib.nameValuePair "package-${name}") self.packages.${system};
  devShells = lib.mapAttrs' (name: lib.nameValuePair "devShell-${name}") self.devShells.${system};

  # The suite without the tests marked `nix`: those build fixtures with the host's /bin/sh into the real
  # /nix/store, which the build sandbox has neither of. They run in .ci/run; the VM tests cover the same
  # ground with NixOS's Nix.
  pytest = niks3d.overridePythonAttrs (old: {
    pname = "niks3d-pytest";
    src = fs.toSource {
      root = ../.;
      fileset = fs.unions [
        ../README.md
        (sourceOf [ "py" "sql" "typed" ] ../niks3d)
        (sourceOf [ "py" ] ../tests)
        ../pyproject.toml
      ];
    };
    doCheck = true;
    nativeCheckInputs =
      (old.nativeCheckInputs or [ ])
      ++ (with pkgs.python3Packages; [
        pytest
        pytest-asyncio
        pytest-timeout
        hypothesis
        pyyaml # tests/e2e/test_github_action.py parses action.yml
      ])
      ++ [
        pkgs.postgresql
        pkgs.seaweedfs
        pkgs.systemd # systemd-socket-activate
      ];
    checkPhase = ''
      runHook preCheck
      export HOME="$TMPDIR"
      # A test whose service is missing fails instead of skipping.
      export NIKS3_REQUIRE_SERVICES=1
      pytest -m 'not nix' -p no:cacheprovider
      runHook postCheck
    '';
  });

  pythonForLint = pkgs.python3.withPackages (
    ps:
    niks3d.pythonDependencies
    ++ [
      ps.mypy
      ps.types-aiobotocore
      ps.types-aiobotocore-s3
      ps.botocore-stubs
      ps.pytest
      ps.hypothesis
    ]
  );

  lint =
    pkgs.runCommand "niks3d-lint"
      {
        nativeBuildInputs = [
          pkgs.ruff
          pkgs.nixfmt
          pkgs.deadnix
          pythonForLint
        ];
        src = fs.toSource {
          root = ../.;
          fileset = sourceOf [ "py" "nix" ] ../.;
        };
      }
      ''
        cd "$src"
        ruff check --no-cache .
        ruff format --check --no-cache .
        mypy --cache-dir "$TMPDIR/mypy" niks3d
        find . -name '*.nix' -print0 | xargs -0 nixfmt --check
        deadnix --fail .
        touch "$out"
      '';

  # The module against each scenario, with the real lib; each accepted TOML must pass check-config too.
  moduleEval =
    let
      results = import ./eval-module.nix { inherit lib; };
      unexpected = lib.filterAttrs (_: result: !result.asExpected) results;
      describe = name: result: "${name} (${result.outcome}, expected ${result.expect})";
      toml = pkgs.formats.toml { };
      # The VM tests' nodes (vm-*) have no TOML of their own to check.
      accepted = lib.filterAttrs (_: result: result.outcome == "ok" && result ? toml) results;
    in
    assert lib.assertMsg (unexpected == { })
      "nix/eval-scenarios.nix: unexpected outcomes: ${lib.concatStringsSep ", " (lib.mapAttrsToList describe unexpected)}";
    pkgs.runCommand "niks3d-module-eval" { nativeBuildInputs = [ niks3d ]; } ''
      ${lib.concatStrings (
        lib.mapAttrsToList (name: result: ''
          echo "== scenario ${name}"
          niks3d check-config --no-secrets ${toml.generate "${name}.toml" result.toml}
        '') accepted
      )}
      touch "$out"
    '';
in
vmTests
// packages
// devShells
// {
  inherit pytest lint;
  module-eval = moduleEval;
}
