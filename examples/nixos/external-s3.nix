# niks3d with its data elsewhere: a bucket at an S3 provider and a PostgreSQL server of its own. Use it in place
# of ./configuration.nix (see ./flake.nix).
#
# Secrets (files outside the Nix store, mode 0400): the signing key and tokens as in ./configuration.nix, plus
#   /run/secrets/niks3/s3-access-key-id, /run/secrets/niks3/s3-secret-access-key   the provider's key pair
#   /run/secrets/niks3/database-password                                           the role's password
# On AWS with an instance role, leave out s3.accessKeyIdFile and s3.secretAccessKeyFile: the AWS default
# credential chain finds the role.
{
  networking.hostName = "cache";
  system.stateVersion = "25.11";

  services.niks3 = {
    enable = true;
    openFirewall = true;
    settings = {
      server = {
        listen = [
          "[::]:5751"
          "0.0.0.0:5751"
        ];
        public_url = "http://cache.example.org:5751";
        # Clients read the bucket directly (https://nix-cache.s3.example.org), so the proxy is off.
        read_proxy = "off";
      };
      s3 = {
        bucket = "nix-cache";
        endpoint_url = "https://s3.example.org";
        region = "eu-central-1";
        addressing_style = "virtual";
        # Check every NAR in full before signing it.
        verify = "full";
      };
      database = {
        url = "postgresql://niks3@db.example.org/niks3?sslmode=verify-full";
        pool_max_size = 20;
      };
      gc.older_than = "14d";
    };
    signingKeyFiles = [ "/run/secrets/niks3/signing-key" ];
    s3 = {
      accessKeyIdFile = "/run/secrets/niks3/s3-access-key-id";
      secretAccessKeyFile = "/run/secrets/niks3/s3-secret-access-key";
    };
    tokens.ci = {
      file = "/run/secrets/niks3/token-ci";
      scopes = [
        "push"
        "pin"
      ];
    };
    database = {
      createLocally = false;
      passwordFile = "/run/secrets/niks3/database-password";
    };
  };
}
