# Configurations of services.niks3 that nix/eval-module.nix evaluates, each with the outcome it must have:
# "ok", "assertion" (an assertion fails with a message), or "error" (the module system refuses the value).
{ lib, example }:
let
  base = {
    services.niks3 = {
      enable = true;
      settings.s3.bucket = "nix-cache";
      signingKeyFiles = [ "/run/keys/niks3-signing-key" ];
    };
  };
  with' = extra: {
    expect = "ok";
    modules = [
      base
      extra
    ];
  };
  failing = expect: extra: (with' extra) // { inherit expect; };
  # The OIDC issuer every oidc-* scenario starts from, each changing the one thing it tests.
  githubRule = scopes: {
    claims.repository_owner = "acme";
    inherit scopes;
  };
  githubIssuer = {
    issuer = "https://token.actions.githubusercontent.com";
    audience = "https://cache.example.org";
    rules = [ (githubRule [ "push" ]) ];
  };
  ciToken = {
    file = "/run/keys/token-ci";
    scopes = [ "push" ];
  };
  # The examples are whole NixOS configurations: accept the options of other modules as they are.
  wholeHost = file: {
    expect = "ok";
    modules = [
      { _module.freeformType = lib.types.lazyAttrsOf lib.types.anything; }
      ./eval-garage-stub.nix
      file
    ];
  };
in
{
  example = {
    expect = "ok";
    modules = [ example ];
  };

  examples-nixos-configuration = wholeHost ../examples/nixos/configuration.nix;

  examples-nixos-external-s3 = wholeHost ../examples/nixos/external-s3.nix;

  # What examples/nixos/flake.nix puts together (but the flake's nixpkgs and the module, which the harness brings).
  examples-nixos-flake-host = wholeHost {
    imports = [
      { nixpkgs.hostPlatform = "x86_64-linux"; }
      ../examples/nixos/hardware-configuration.nix
      ../examples/nixos/configuration.nix
    ];
  };

  minimal = with' { };

  unix-socket-only = with' {
    services.niks3 = {
      openFirewall = true;
      settings.server.listen = [ "unix:/run/niks3/niks3.sock" ];
    };
  };

  external-database = with' {
    services.niks3 = {
      database.createLocally = false;
      database.passwordFile = "/run/keys/niks3-database-password";
      settings.database.url = "postgresql://niks3@db.example.org/niks3";
    };
  };

  gc-timer-off = with' { services.niks3.gc.automatic = false; };

  freeform-keys = with' {
    services.niks3.settings = {
      server.drain_seconds = 30;
      s3.verify = "full";
      logging.level = "debug";
    };
  };

  # HTTPS with client certificates: the certificate and the CA may be store paths, the key may not.
  tls-client-certificates = with' {
    services.niks3 = {
      tls = {
        certificateFile = "/nix/store/00000000000000000000000000000000-server.crt";
        keyFile = "/run/keys/niks3-tls-key";
        clientCaFile = "/etc/niks3/clients-ca.crt";
      };
      settings.tls = {
        client_certificates = "required";
        clients = [
          {
            subject = "CN=builder-*,O=Example";
            scopes = [ "push" ];
          }
        ];
      };
    };
  };

  tls-certificate-without-key = failing "assertion" {
    services.niks3.tls.certificateFile = "/etc/niks3/server.crt";
  };

  tls-rules-without-certificate = failing "assertion" {
    services.niks3.settings.tls.clients = [
      {
        dns = "*.example.org";
        scopes = [ "read" ];
      }
    ];
  };

  tls-key-in-settings = failing "assertion" {
    services.niks3.settings.tls.key_file = "/etc/niks3/server.key";
  };

  tls-key-in-store = failing "error" {
    services.niks3.tls = {
      certificateFile = "/etc/niks3/server.crt";
      keyFile = "/nix/store/00000000000000000000000000000000-server.key";
    };
  };

  oidc-issuers = with' {
    services.niks3.oidc.github = githubIssuer // {
      nameClaim = "repository";
      rules = [
        {
          claims = {
            repository_owner = "acme";
            ref = "refs/heads/main";
          };
          scopes = [ "push" ];
        }
      ];
    };
  };

  oidc-in-both-places = failing "assertion" {
    services.niks3.oidc.github = githubIssuer;
    services.niks3.settings.oidc = [ ];
  };

  oidc-bad-name = failing "assertion" { services.niks3.oidc."acme:github" = githubIssuer; };

  oidc-http-issuer = failing "error" {
    services.niks3.oidc.github = githubIssuer // {
      issuer = "http://token.example.org";
    };
  };

  oidc-unknown-scope = failing "error" {
    services.niks3.oidc.github = githubIssuer // {
      rules = [ (githubRule [ "write" ]) ];
    };
  };

  no-signing-key = failing "assertion" { services.niks3.signingKeyFiles = lib.mkForce [ ]; };

  one-s3-key-file = failing "assertion" {
    services.niks3.s3.accessKeyIdFile = "/run/keys/s3-access-key-id";
  };

  local-database-remote-url = failing "assertion" {
    services.niks3.settings.database.url = "postgresql://niks3@db.example.org/niks3";
  };

  local-database-with-password = failing "assertion" {
    services.niks3.database.passwordFile = "/run/keys/niks3-database-password";
  };

  private-proxy-without-reader = failing "assertion" {
    services.niks3 = {
      settings.server.read_proxy = "private";
      tokens.ci = ciToken;
    };
  };

  private-metrics-without-scraper = failing "assertion" {
    services.niks3.settings.server.metrics = "private";
  };

  secret-in-settings = failing "assertion" {
    services.niks3.settings.s3.secret_access_key_file = "/etc/niks3/s3-secret";
  };

  bad-token-name = failing "assertion" { services.niks3.tokens."ci runner" = ciToken; };

  gc-without-dates = failing "assertion" { services.niks3.gc.dates = [ ]; };

  secret-in-store = failing "error" {
    services.niks3.signingKeyFiles = lib.mkForce [
      "/nix/store/00000000000000000000000000000000-signing-key"
    ];
  };

  secret-as-path-literal = failing "error" {
    services.niks3.signingKeyFiles = lib.mkForce [ ./example.nix ];
  };

  bad-duration = failing "error" { services.niks3.settings.gc.older_than = "30 days"; };

  bad-read-proxy = failing "error" { services.niks3.settings.server.read_proxy = "open"; };

  # `base` without its bucket.
  missing-bucket = {
    expect = "error";
    modules = [ { services.niks3 = removeAttrs base.services.niks3 [ "settings" ]; } ];
  };
}
