# What the VM tests share: the nodes (`s3`: Garage, a one-node cluster whose bucket and key the test script makes
# with `setup_s3()`, `server`: niks3 with a local PostgreSQL, `client`: a plain NixOS machine with Nix), the
# test-only secrets, the store paths that get pushed, and Python helpers for the test scripts. (MinIO is marked
# insecure in nixpkgs, abandoned upstream, so runNixOSTest refuses it; nixpkgs' own tests moved to Garage.)
#
# The secrets below are for these tests only. They reach the server as files under /etc/niks3, mode 0400,
# the way a secrets manager deploys them under /run/secrets; the module never sees a store path.
{ pkgs, self }:
let
  inherit (pkgs) lib;
in
rec {
  bucket = "nix-cache";
  # The key niks3d and the test helpers sign S3 requests with, in Garage's formats ("GK" and 24 hex digits, 64
  # hex digits); the test script imports it into Garage (`garage key import`).
  s3Key = {
    id = "GK5e1a6c0b2f9d4e8a7c3b1d0e";
    secret = "9c2f7a41d8e06b5c3a1f9e8d7c6b5a4f3e2d1c0b9a8f7e6d5c4b3a2f1e0d9c8b";
    name = "niks3";
  };
  # Garage's S3 API on the port the tests have always used; signed for niks3d's default region.
  s3Port = 9000;

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
    services.garage = {
      enable = true;
      package = pkgs.garage_2;
      # Garage 2 refuses the legacy `replication_mode`; these two replace it (nixpkgs' own
      # nixos/tests/garage/basic.nix sets the same pair for garage_2).
      settings = {
        replication_factor = 1;
        consistency_mode = "consistent";
        db_engine = "sqlite";
        rpc_bind_addr = "[::]:3901";
        rpc_public_addr = "127.0.0.1:3901";
        # Test-only, like every secret here.
        rpc_secret = "4f0e3d2c1b0a99887766554433221100ffeeddccbbaa00998877665544332211";
        s3_api = {
          s3_region = "us-east-1";
          api_bind_addr = "[::]:${toString s3Port}";
        };
      };
    };
    # Garage refuses to start with less than 1 GiB free (nixpkgs' garage tests give it 2 GiB).
    virtualisation.diskSize = 2 * 1024;
    environment.systemPackages = [ pkgs.minio-client ];
    networking.firewall.allowedTCPPorts = [ s3Port ];
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
          endpoint_url = "http://s3:${toString s3Port}";
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
          "niks3/s3-access-key-id" = s3Key.id;
          "niks3/s3-secret-access-key" = s3Key.secret;
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
      S3_ENV = "AWS_ACCESS_KEY_ID=${s3Key.id} AWS_SECRET_ACCESS_KEY=${s3Key.secret}"
      MC = "MC_HOST_local=http://${s3Key.id}:${s3Key.secret}@localhost:${toString s3Port} mc"


      def setup_s3() -> None:
          """Garage as a one-node cluster, then the bucket and niks3d's key (made here, not in the configuration)."""
          s3.wait_for_unit("garage.service")
          s3.wait_for_open_port(${toString s3Port})
          node_id = s3.succeed("garage node id").strip().splitlines()[0].split("@")[0]
          s3.succeed(f"garage layout assign -z vmtest -c 1G {node_id}")
          s3.succeed("garage layout apply --version 1")
          s3.succeed(f"garage bucket create {BUCKET}")
          s3.succeed("garage key import --yes -n ${s3Key.name} ${s3Key.id} ${s3Key.secret}")
          s3.succeed(f"garage bucket allow --read --write --owner {BUCKET} --key ${s3Key.name}")
          s3.wait_until_succeeds(f"{MC} ls local/{BUCKET}", timeout=60)


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
