# One machine with everything: niks3d, its PostgreSQL (services.niks3.database.createLocally), MinIO holding the
# bucket, and nginx terminating TLS for both the cache (cache.example.org) and the S3 endpoint that pushers
# upload to with presigned URLs (s3.example.org).
#
# Secrets are files outside the Nix store, deployed by sops-nix, agenix or by hand (mode 0400, owned by root):
#   /run/secrets/niks3/signing-key            nix key generate-secret --key-name cache.example.org-1
#   /run/secrets/niks3/token-ci               openssl rand -hex 32
#   /run/secrets/niks3/token-admin            openssl rand -hex 32
#   /run/secrets/niks3/s3-access-key-id       the MinIO user niks3d signs requests as
#   /run/secrets/niks3/s3-secret-access-key   its secret key
#   /run/secrets/minio-root                   MINIO_ROOT_USER=... and MINIO_ROOT_PASSWORD=... (see services.minio)
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
        # niks3d talks to MinIO on loopback; pushers upload through nginx.
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

  services.minio = {
    enable = true;
    listenAddress = "127.0.0.1:9000";
    consoleAddress = "127.0.0.1:9001";
    rootCredentialsFile = "/run/secrets/minio-root";
  };

  # niks3d checks that its bucket exists when it starts: create it once, with the user niks3d signs as.
  systemd.services.niks3-bucket = {
    description = "Create the niks3d bucket and its MinIO user";
    wantedBy = [ "multi-user.target" ];
    requires = [ "minio.service" ];
    after = [ "minio.service" ];
    before = [ "niks3.service" ];
    path = [ pkgs.minio-client ];
    serviceConfig = {
      Type = "oneshot";
      RemainAfterExit = true;
      RuntimeDirectory = "niks3-bucket";
      EnvironmentFile = config.services.minio.rootCredentialsFile;
      LoadCredential = [
        "access-key-id:/run/secrets/niks3/s3-access-key-id"
        "secret-access-key:/run/secrets/niks3/s3-secret-access-key"
      ];
    };
    script = ''
      mc() { command mc --config-dir "$RUNTIME_DIRECTORY" "$@"; }
      export MC_HOST_local="http://$MINIO_ROOT_USER:$MINIO_ROOT_PASSWORD@127.0.0.1:9000"
      until mc ls local >/dev/null; do sleep 1; done
      mc mb --ignore-existing local/${bucket}
      mc admin user add local "$(cat "$CREDENTIALS_DIRECTORY/access-key-id")" \
        "$(cat "$CREDENTIALS_DIRECTORY/secret-access-key")"
      mc admin policy attach local readwrite --user "$(cat "$CREDENTIALS_DIRECTORY/access-key-id")" || true
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
