# The documented example of services.niks3: one server, a local PostgreSQL, an external S3 bucket.
#
# This file is the single source of the example: docs/nixos.md shows it verbatim, the module shows its settings
# as the `settings` option's example, and tests/nix_module/test_example_config.py renders it with nix/render.nix
# and checks the TOML with `niks3d check-config --no-secrets`. It uses no nixpkgs, so that test runs anywhere
# `nix-instantiate` does. The secret files are deployed outside the Nix store (sops-nix, agenix, or by hand).
{
  services.niks3 = {
    enable = true;
    openFirewall = true;

    settings = {
      server = {
        # TCP on every IPv6 and IPv4 address, and a Unix socket for a reverse proxy on this host.
        listen = [
          "[::]:5751"
          "0.0.0.0:5751"
          "unix:/run/niks3/niks3.sock"
        ];
        public_url = "https://cache.example.org";
        read_proxy = "public";
      };
      s3 = {
        bucket = "nix-cache";
        endpoint_url = "https://s3.example.org";
        region = "eu-central-1";
        addressing_style = "path";
      };
      cache.priority = 30;
      gc = {
        older_than = "30d";
        grace_period = "2h";
      };
    };

    signingKeyFiles = [ "/run/secrets/niks3/signing-key" ];
    s3 = {
      accessKeyIdFile = "/run/secrets/niks3/s3-access-key-id";
      secretAccessKeyFile = "/run/secrets/niks3/s3-secret-access-key";
    };
    tokens = {
      ci = {
        file = "/run/secrets/niks3/token-ci";
        scopes = [
          "push"
          "pin"
        ];
      };
      admin = {
        file = "/run/secrets/niks3/token-admin";
        scopes = [ "admin" ];
      };
    };

    database.createLocally = true;

    gc = {
      automatic = true;
      dates = "daily";
      randomizedDelaySec = "1h";
      persistent = true;
    };
  };
}
