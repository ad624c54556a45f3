# niks3d, the Python application: `niks3d` (server, migrations, GC, check-config, dev) and `niks3` (client).
#
# The version comes from pyproject.toml and the dependencies from nixpkgs. The test suite needs PostgreSQL,
# SeaweedFS and a Nix store, so it runs in checks.pytest (nix/checks.nix), not in this build.
{ lib, python3Packages }:
let
  pyproject = lib.importTOML ../pyproject.toml;
  fs = lib.fileset;
  notBytecode = fs.fileFilter (file: !(file.hasExt "pyc")) ../niks3d;

  dependencies = with python3Packages; [
    aiohttp
    multidict
    aiobotocore
    asyncpg
    pydantic
    pydantic-settings
    tomli-w
    zstandard
    pynacl
    prometheus-client
    uvloop
    pyjwt
    cryptography
    # The `systemd` extra: native journal entries with structured fields (NIKS3_EVENT=...).
    (python3Packages.systemd-python or python3Packages.systemd)
  ];
in
python3Packages.buildPythonApplication {
  pname = "niks3d";
  inherit (pyproject.project) version;
  pyproject = true;

  src = fs.toSource {
    root = ../.;
    fileset = fs.unions [
      ../pyproject.toml
      ../README.md
      notBytecode
    ];
  };

  build-system = with python3Packages; [
    setuptools
    wheel
  ];

  inherit dependencies;

  doCheck = false;

  pythonImportsCheck = [
    "niks3d.cli.main"
    "niks3d.client.main"
    "niks3d.server.app"
  ];

  # For environments that run niks3d from its source: the dev shell, mypy, the test suite.
  passthru.pythonDependencies = dependencies;

  meta = {
    description = pyproject.project.description;
    license = lib.licenses.mit;
    mainProgram = "niks3d";
    platforms = lib.platforms.linux;
  };
}
