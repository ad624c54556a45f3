# `nix develop`: Python with niks3d's dependencies and the test and lint tools, plus the real services the test
# suite starts (PostgreSQL, SeaweedFS). niks3d itself runs from the checkout (PYTHONPATH), so edits take effect
# at once.
{
  mkShell,
  python3,
  niks3d,
  postgresql,
  seaweedfs,
  systemd,
  ruff,
  nixfmt,
  deadnix,
}:
mkShell {
  packages = [
    (python3.withPackages (
      ps:
      niks3d.pythonDependencies
      ++ (with ps; [
        pytest
        pytest-asyncio
        pytest-timeout
        hypothesis
        mypy
        types-aiobotocore
        types-aiobotocore-s3
        botocore-stubs
      ])
    ))
    postgresql
    seaweedfs
    systemd # systemd-socket-activate, for tests/server/test_socket_activation.py
    ruff
    nixfmt
    deadnix
  ];

  shellHook = ''
    export PYTHONPATH="$PWD''${PYTHONPATH:+:$PYTHONPATH}"
  '';
}
