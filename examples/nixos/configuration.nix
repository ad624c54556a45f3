# One machine with everything: niks3d, its PostgreSQL (services.niks3.database.createLocally), Garage holding the
# bucket (a one-node cluster), and nginx terminating TLS for both the cache (cache.example.org) and the S3 endpoint that pushers
# upload to with presigned URLs (s3.example.org).
#
# Secrets are files outside the Nix store, deployed by sops-nix, agenix or by hand (mode 0400, owned by root):
#   /run/secrets/niks3/signing-key            nix key generate-secret --key-name cache.example.org-1
#   /run/secrets/niks3/token-ci               openssl rand -hex 32
#   /run/secrets/niks3/token-admin            openssl rand -hex 32
#   /run/secrets/niks3/s3-access-key-id       the Garage key niks3d signs requests as: GK and 24 hex digits
#   /run/secrets/niks3/s3-secret-access-key   its secret: 64 hex digits (openssl rand -hex 32)
#   /run/secrets/garage-environment           GARAGE_RPC_SECRET=<openssl rand -hex 32>, Garage's RPC secret
{ config, pkgs, ... }:
let
  bucket = "nix-cache";
in
{
  networking.hostName = "cache";
  system.stateVersion = "25.11";

  services.niks3 = {
    enable = true;
    settings = {
      server = {
        # nginx forwards to the Unix socket; nothing listens on the network but nginx.
        listen = [ "unix:/run/niks3/niks3.sock" ];
        public_url = "https://cache.example.org";
        read_proxy = "public";
      };
      s3 = {
        inherit bucket;
        # niks3d talks to Garage on loopback; pushers upload through nginx.
        endpoint_url = "http://127.0.0.1:9000";
        public_endpoint_url = "https://s3.example.org";
        addressing_style = "path";
      };
      cache.priority = 30;
      gc = {
        older_than = "30d";
        grace_period = "1h";
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
    gc = {
      dates = "04:00";
      randomizedDelaySec = "30min";
    };
  };

  services.garage = {
    enable = true;
    package = pkgs.garage_2;
    # Garage runs as a DynamicUser, so it cannot read a root-owned secret file (and refuses a readable one):
    # systemd reads this environment file before it drops privileges, and the `garage` command the module puts
    # on PATH reads it too.
    environmentFile = "/run/secrets/garage-environment";
    settings = {
      replication_factor = 1;
      consistency_mode = "consistent";
      db_engine = "sqlite";
      rpc_bind_addr = "127.0.0.1:3901";
      rpc_public_addr = "127.0.0.1:3901";
      s3_api = {
        # niks3d signs for its default region unless services.niks3.settings.s3.region says otherwise.
        s3_region = "us-east-1";
        api_bind_addr = "127.0.0.1:9000";
      };
    };
  };

  # niks3d checks that its bucket exists when it starts: give the one-node cluster its layout, then create the
  # bucket and import the key niks3d signs with (each step is skipped when it is done already).
  systemd.services.niks3-bucket = {
    description = "Create the niks3d bucket and its Garage key";
    wantedBy = [ "multi-user.target" ];
    requires = [ "garage.service" ];
    after = [ "garage.service" ];
    before = [ "niks3.service" ];
    path = [ config.services.garage.package ];
    serviceConfig = {
      Type = "oneshot";
      RemainAfterExit = true;
      # The RPC secret the garage commands below need to reach the node.
      EnvironmentFile = config.services.garage.environmentFile;
      LoadCredential = [
        "access-key-id:/run/secrets/niks3/s3-access-key-id"
        "secret-access-key:/run/secrets/niks3/s3-secret-access-key"
      ];
    };
    script = ''
      until garage status >/dev/null 2>&1; do sleep 1; done
      if garage layout show | grep -q 'Current cluster layout version: 0'; then
        garage layout assign -z dc1 -c 100G "$(garage node id | head -n 1 | cut -d@ -f1)"
        garage layout apply --version 1
      fi
      garage bucket info ${bucket} >/dev/null 2>&1 || garage bucket create ${bucket}
      key_id="$(cat "$CREDENTIALS_DIRECTORY/access-key-id")"
      garage key info "$key_id" >/dev/null 2>&1 ||
        garage key import --yes -n niks3 "$key_id" "$(cat "$CREDENTIALS_DIRECTORY/secret-access-key")"
      garage bucket allow --read --write --owner ${bucket} --key "$key_id"
    '';
  };

  services.nginx = {
    enable = true;
    recommendedProxySettings = true;
    recommendedTlsSettings = true;
    virtualHosts."cache.example.org" = {
      enableACME = true;
      forceSSL = true;
      locations."/" = {
        proxyPass = "http://unix:/run/niks3/niks3.sock";
        # API requests are at most server.max_body_bytes (32 MiB by default).
        extraConfig = ''
          client_max_body_size 32m;
          proxy_buffering off;
        '';
      };
    };
    # Presigned uploads: SigV4 covers the Host header, which recommendedProxySettings passes on unchanged.
    virtualHosts."s3.example.org" = {
      enableACME = true;
      forceSSL = true;
      locations."/" = {
        proxyPass = "http://127.0.0.1:9000";
        extraConfig = ''
          client_max_body_size 0;
          proxy_request_buffering off;
          proxy_buffering off;
        '';
      };
    };
  };

  security.acme = {
    acceptTerms = true;
    defaults.email = "admin@example.org";
  };

  networking.firewall.allowedTCPPorts = [
    80
    443
  ];
}
