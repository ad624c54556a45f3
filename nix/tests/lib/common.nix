# What the VM tests share: the nodes (`s3`: MinIO with the bucket, `server`: niks3 with a local PostgreSQL,
# `client`: a plain NixOS machine with Nix), the test-only secrets, the store paths that get pushed, and Python
# helpers for the test scripts.
#
# The secrets below are for these tests only. They reach the server as files under /etc/niks3, mode 0400,
# the way a secrets manager deploys them under /run/secrets; the module never sees a store path.
{ pkgs, self }:
let
  inherit (pkgs) lib;
in
rec {
  bucket = "nix-cache";
  minio = {
    user = "niks3-minio";
    password = "niks3-minio-secret";
  };

  signing = {
    secretKey = "niks3-vmtest-1:wZVyUfup9QtYpFI5NNa9IX1qsNB/0kHChXPYdjQHjAnAVsTIUBrRtFDC2k5Qu2uk53Ggj8LeaGdW5y5bFxTPlw==";
    publicKey = "niks3-vmtest-1:wFbEyFAa0bRQwtpOULtrpOdxoI/C3mhnVucuWxcUz5c=";
    # The same key name with another key: what a client trusting only this must refuse.
    impostorKey = "niks3-vmtest-1:y7n8CIGSye3a/PILam54ySIBMk+F0YCjuNn5k0iTVQA=";
  };

  tokens = {
    ci = "efe810c3ec591b730d31b97c88d97899db0fd6ec5718fc74";
    admin = "e01eda5ad70bb7c53da69a51a61867a542cb4f308563bb9e";
  };

  # Store paths the server pushes and the client does not have. The text of each names its references.
  paths = rec {
    shared = pkgs.writeText "niks3-shared" "a dependency of every root\n";
    app = pkgs.writeText "niks3-app" "the pushed root, which needs ${shared}\n";
    refused = pkgs.writeText "niks3-refused" "pushed with a wrong token, never published\n";
    oldOnly = pkgs.writeText "niks3-old-only" "needed by the expiring root alone\n";
    old = pkgs.writeText "niks3-old" "an expiring root, which needs ${shared} and ${oldOnly}\n";
    kept = pkgs.writeText "niks3-kept" "a pinned root, which needs ${shared}\n";
  };

  s3Node = {
    services.minio = {
      enable = true;
      rootCredentialsFile = pkgs.writeText "minio-credentials" ''
        MINIO_ROOT_USER=${minio.user}
        MINIO_ROOT_PASSWORD=${minio.password}
      '';
    };
    # niks3d checks that its bucket exists; create it once MinIO answers.
    systemd.services.niks3-bucket = {
      wantedBy = [ "multi-user.target" ];
      requires = [ "minio.service" ];
      after = [ "minio.service" ];
      path = [ pkgs.minio-client ];
      environment.MC_HOST_local = "http://${minio.user}:${minio.password}@localhost:9000";
      script = ''
        until mc --config-dir "$RUNTIME_DIRECTORY" ls local >/dev/null; do sleep 1; done
        mc --config-dir "$RUNTIME_DIRECTORY" mb --ignore-existing local/${bucket}
      '';
      serviceConfig = {
        Type = "oneshot";
        RemainAfterExit = true;
        RuntimeDirectory = "niks3-bucket";
      };
    };
    environment.systemPackages = [ pkgs.minio-client ];
    networking.firewall.allowedTCPPorts = [ 9000 ];
  };

  serverNode = {
    imports = [ self.nixosModules.default ];
    services.niks3 = {
      enable = true;
      openFirewall = true;
      settings = {
        server.listen = [
          "0.0.0.0:5751"
          "[::]:5751"
          "unix:/run/niks3/niks3.sock"
        ];
        s3 = {
          inherit bucket;
          endpoint_url = "http://s3:9000";
          addressing_style = "path";
        };
        cache.priority = 35;
      };
      signingKeyFiles = [ "/etc/niks3/signing-key" ];
      s3 = {
        accessKeyIdFile = "/etc/niks3/s3-access-key-id";
        secretAccessKeyFile = "/etc/niks3/s3-secret-access-key";
      };
      tokens = {
        ci = {
          file = "/etc/niks3/token-ci";
          scopes = [
            "push"
            "pin"
            "read"
          ];
        };
        admin = {
          file = "/etc/niks3/token-admin";
          scopes = [ "admin" ];
        };
      };
    };
    environment.etc =
      lib.mapAttrs
        (_: text: {
          inherit text;
          mode = "0400";
        })
        {
          "niks3/signing-key" = signing.secretKey;
          "niks3/s3-access-key-id" = minio.user;
          "niks3/s3-secret-access-key" = minio.password;
          "niks3/token-ci" = tokens.ci;
          "niks3/token-admin" = tokens.admin;
          # Not a token of the server's: for the negative twin of a push.
          "niks3/token-wrong" = "0000000000000000000000000000000000000000";
        };
    nix.settings.experimental-features = [ "nix-command" ];
    virtualisation.additionalPaths = builtins.attrValues paths;
    environment.systemPackages = [ pkgs.curl ];
  };

  clientNode = {
    nix.settings = {
      experimental-features = [ "nix-command" ];
      substituters = lib.mkForce [ ];
    };
    environment.systemPackages = [ pkgs.curl ];
  };

  # Prepended to every test script, given the server's services.niks3.settings. `server`, `s3` and `client`
  # are the driver's machine objects.
  pythonHelpers =
    settings:
    let
      tcpListen = lib.findFirst (address: !lib.hasPrefix "unix:" address) null settings.server.listen;
      port = lib.last (lib.splitString ":" tcpListen);
      prefix = lib.removeSuffix "/" (settings.server.proxy_prefix or "/");
    in
    ''
    import json
    import shlex

    PORT = ${port}
    LOCAL_URL = "http://127.0.0.1:${port}"
    SERVER_URL = "http://server:${port}"
    PROXY_URL = SERVER_URL + "${prefix}"
    BUCKET = "${bucket}"
    PUBLIC_KEY = "${signing.publicKey}"
    IMPOSTOR_KEY = "${signing.impostorKey}"
    S3_ENV = "AWS_ACCESS_KEY_ID=${minio.user} AWS_SECRET_ACCESS_KEY=${minio.password}"
    MC = "MC_HOST_local=http://${minio.user}:${minio.password}@localhost:9000 mc"


    def narinfo_key(path: str) -> str:
        """The bucket key of a store path's narinfo: its hash part."""
        return path.removeprefix("/nix/store/")[:32] + ".narinfo"


    def bucket_keys() -> set[str]:
        """Every key in the bucket."""
        prefix = f"local/{BUCKET}/"
        out = s3.succeed(f"{MC} find local/{BUCKET}")
        return {line.strip().removeprefix(prefix) for line in out.splitlines() if line.strip()}


    def bucket_text(key: str) -> str:
        return s3.succeed(f"{MC} cat local/{BUCKET}/{shlex.quote(key)}")


    def key_values(text: str, separator: str) -> dict[str, str]:
        """`Key: value` lines (narinfo) or `Key=value` lines (systemctl show) as a dict."""
        result: dict[str, str] = {}
        for line in text.splitlines():
            name, found, value = line.partition(separator)
            if found:
                result[name] = value
        return result


    def narinfo_fields(text: str) -> dict[str, str]:
        return key_values(text, ": ")


    def assert_closed_bucket() -> None:
        """Every narinfo in the bucket names a NAR that is there and references whose narinfos are there."""
        keys = bucket_keys()
        for key in sorted(k for k in keys if k.endswith(".narinfo")):
            fields = narinfo_fields(bucket_text(key))
            assert fields["URL"] in keys, f"{key} names {fields['URL']}, which is not in the bucket"
            for ref in fields.get("References", "").split():
                assert narinfo_key(ref) in keys, f"{key} refers to {ref}, whose narinfo is not in the bucket"


    def nix_copy(source: str, path: str, key: str, store: str, env: str = "") -> str:
        """A `nix copy` of PATH's closure from SOURCE into the fresh chroot store STORE, trusting only KEY.

        require-sigs stays on, and each copy gets its own narinfo cache, so nothing is remembered between
        copies."""
        return (
            f"env XDG_CACHE_HOME=$(mktemp -d) {env} nix copy --from {shlex.quote(source)} "
            f"--to {shlex.quote('local?root=' + store)} "
            f"--option trusted-public-keys {shlex.quote(key)} {path} 2>&1"
        )


    def unit_properties(machine, unit: str, *names: str) -> dict[str, str]:
        out = machine.succeed(f"systemctl show {unit} " + " ".join(f"--property={n}" for n in names))
        return key_values(out, "=")


    def journal_events(machine, unit: str, event: str) -> list[dict[str, str]]:
        """The journal entries of UNIT with NIKS3_EVENT=EVENT, with all their fields."""
        out = machine.succeed(f"journalctl --unit={unit} --output=json NIKS3_EVENT={event}")
        return [json.loads(line) for line in out.splitlines() if line.strip()]


    def push(*args: str, token: str = "/etc/niks3/token-ci") -> str:
        """The `niks3 push` command line for ARGS, against the server's own address (LOCAL_URL)."""
        return f"niks3 push --server {LOCAL_URL} --token-file {token} --no-progress {' '.join(args)} 2>&1"
  '';
}
