# services.niks3-upload: upload everything this machine builds to a niks3d cache, as it builds it.
#
# For builders and CI runners (docs/nixos.md, "Uploading what a machine builds"). It sets Nix's post-build-hook
# to the script of `niks3 hook-script` (sh + sqlite3: it only queues, a few milliseconds per build, and never
# fails a build) and runs `niks3 agent` as a hardened Type=notify service that drains the queue, with the API
# token passed by LoadCredential. This file is separate from ./module.nix (the server); flake.nix exports both.
{ packageFor }:
{
  config,
  lib,
  pkgs,
  ...
}:
let
  inherit (lib) mkOption types;

  cfg = config.services.niks3-upload;
  stateDir = "/var/lib/niks3-upload";
  queue = "${stateDir}/queue.sqlite";
  niks3 = lib.getExe' cfg.package "niks3";

  # Written at build time by the package itself, so the script, its Python fallback and the queue's schema
  # always match. The hook runs as root in nix-daemon: absolute paths only.
  hookScript = pkgs.runCommand "niks3-post-build-hook" { } ''
    ${niks3} hook-script --queue ${queue} --sqlite3 ${lib.getExe' pkgs.sqlite "sqlite3"} --output $out
  '';

  agentArgs = [
    "--queue"
    queue
    "--token-file"
    "%d/token"
    "--batch"
    (toString cfg.batchSize)
  ]
  ++ lib.optionals cfg.scanStore [ "--scan-store" ]
  ++ cfg.extraArgs;
in
{
  options.services.niks3-upload = {
    enable = lib.mkEnableOption "uploading every path this machine builds to a niks3d cache";

    package = mkOption {
      type = types.package;
      default = packageFor pkgs;
      defaultText = lib.literalMD "niks3d built from this flake with the system's `pkgs`";
      description = "The niks3d package, which provides `niks3`.";
    };

    serverUrl = mkOption {
      type = types.strMatching "https?://.+";
      example = "https://cache.example.org";
      description = "The niks3d server to upload to.";
    };

    tokenFile = mkOption {
      type = types.pathWith {
        absolute = true;
        inStore = false;
      };
      example = "/run/secrets/niks3-push-token";
      description = ''
        A file holding an API token with the `push` scope. It is passed to the agent with `LoadCredential=`, so
        it may be readable by root only; it never enters the Nix store.
      '';
    };

    setPostBuildHook = mkOption {
      type = types.bool;
      default = true;
      description = ''
        Whether to set `nix.settings.post-build-hook` to niks3's hook. Turn it off to combine it with a hook of
        your own: call `config.services.niks3-upload.hook` from it (it reads `OUT_PATHS` and `DRV_PATH`).
      '';
    };

    hook = mkOption {
      type = types.path;
      readOnly = true;
      default = hookScript;
      defaultText = lib.literalMD "the script of `niks3 hook-script` for the agent's queue";
      description = "The post-build hook program that queues into the agent's queue.";
    };

    scanStore = mkOption {
      type = types.bool;
      default = false;
      description = ''
        Also queue paths that appear in the local store without being built here (substituted from another
        cache, fetched, added): the agent reads them from the Nix database, which it may then write (SQLite's
        shared-memory file). Nix calls the post-build hook only for what it builds.
      '';
    };

    batchSize = mkOption {
      type = types.ints.positive;
      default = 100;
      description = "Queued paths pushed in one upload session.";
    };

    extraArgs = mkOption {
      type = types.listOf types.str;
      default = [ ];
      example = [
        "--max-backoff"
        "300"
      ];
      description = "More arguments of `niks3 agent` (docs/client.md).";
    };
  };

  config = lib.mkIf cfg.enable {
    nix.settings = lib.mkIf cfg.setPostBuildHook { post-build-hook = cfg.hook; };

    # The hook runs as root inside nix-daemon and writes the queue; the agent runs as root too, with no
    # capabilities, so both own the database files (SQLite creates its -wal and -shm files with the database's
    # owner and mode).
    systemd.tmpfiles.settings.niks3-upload.${stateDir}.d = {
      user = "root";
      group = "root";
      mode = "0700";
    };

    systemd.services.niks3-upload = {
      description = "niks3: upload what this machine builds";
      wantedBy = [ "multi-user.target" ];
      wants = [ "network-online.target" ];
      after = [
        "network-online.target"
        "nix-daemon.socket"
      ];
      path = [ config.nix.package ];
      environment = {
        NIKS3_SERVER_URL = cfg.serverUrl;
        # The agent asks the daemon for path metadata; the store is read-only to it (ProtectSystem=strict).
        NIX_REMOTE = "daemon";
        # /root is hidden (ProtectHome): nix's own cache goes to the unit's cache directory.
        XDG_CACHE_HOME = "%C/niks3-upload";
      };
      serviceConfig = import ./hardening.nix // {
        Type = "notify";
        ExecStart = "${niks3} agent ${lib.escapeShellArgs agentArgs}";
        LoadCredential = [ "token:${cfg.tokenFile}" ];
        Restart = "on-failure";
        RestartSec = "5s";
        StateDirectory = "niks3-upload";
        CacheDirectory = "niks3-upload";
        StateDirectoryMode = "0700";
        ReadWritePaths = lib.optionals cfg.scanStore [ "/nix/var/nix/db" ];
      };
    };
  };
}
