# The systemd sandbox that niks3.service, niks3-gc.service (./module.nix) and niks3-upload.service (./upload.nix)
# share: no capabilities, no devices, a read-only system, no new privileges, the kernel and the clock out of
# reach, IP and Unix sockets only, native system calls of the @system-service set. Each unit adds what is its
# own (the daemon's user namespace and narrower system call filter, the agent's writable Nix database).
{
  UMask = "0077";

  CapabilityBoundingSet = [ "" ];
  DevicePolicy = "closed";
  LockPersonality = true;
  # pynacl and zstandard are compiled extensions (cffi out-of-line and C); nothing maps W+X memory.
  # The VM tests sign and verify NARs under this setting.
  MemoryDenyWriteExecute = true;
  NoNewPrivileges = true;
  PrivateDevices = true;
  PrivateTmp = true;
  ProtectClock = true;
  ProtectControlGroups = true;
  ProtectHome = true;
  ProtectHostname = true;
  ProtectKernelLogs = true;
  ProtectKernelModules = true;
  ProtectKernelTunables = true;
  ProtectProc = "invisible";
  ProtectSystem = "strict";
  RestrictAddressFamilies = [
    "AF_UNIX"
    "AF_INET"
    "AF_INET6"
  ];
  RestrictNamespaces = true;
  RestrictRealtime = true;
  RestrictSUIDSGID = true;
  SystemCallArchitectures = "native";
  SystemCallFilter = [ "@system-service" ];
}
