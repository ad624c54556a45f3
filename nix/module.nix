# services.niks3: the niks3d binary cache as a socket-activated Type=notify service, its local PostgreSQL, and
# a garbage-collection timer.
#
# flake.nix applies this file with lib.modules.importApply and passes `packageFor`, which builds niks3d from
# this repository with the system's own pkgs. What the units and the TOML contain (credential ids, listen
# sockets) comes from ./render.nix, which the Python tests evaluate too; docs/nixos.md explains every choice.
{ packageFor }:
{
  config,
  lib,
  pkgs,
  ...
}:
let
  inherit (lib) mkOption types;

  cfg = config.services.niks3;
  format = pkgs.formats.toml { };
  rendered = import ./render.nix cfg;

  localDatabaseUrl = "postgresql:///niks3?host=/run/postgresql";
  scopes = import ./scopes.nix;
  hardening = import ./hardening.nix;

  # The module uses types.pathWith (lib, 25.11) and postgresql.target (the PostgreSQL module, 25.11). pathWith is
  # needed while the options are declared, before any assertion can run, so its absence throws the same message.
  minimumRelease = "25.11";
  tooOld = "services.niks3 needs NixOS ${minimumRelease} or newer (it uses types.pathWith and postgresql.target), but this nixpkgs is ${lib.trivial.release}.";

  # A secret is a path string outside the Nix store, so that it can never be copied into it by accident.
  secretPath =
    if types ? pathWith then
      types.pathWith {
        absolute = true;
        inStore = false;
      }
    else
      throw tooOld;
  # A certificate is public: it may live in the Nix store.
  certificatePath = if types ? pathWith then types.pathWith { absolute = true; } else throw tooOld;
  duration = types.either types.ints.unsigned (types.strMatching "[0-9]+[smhdw]?");

  niks3d = lib.getExe' cfg.package "niks3d";
  settingsFile = format.generate "niks3d.toml" rendered.settings;
  # The file the units read: the generated TOML, once `niks3d check-config` accepted its structure. The secrets
  # do not exist at build time, so they are not opened (--no-secrets).
  configFile =
    if pkgs.stdenv.buildPlatform.canExecute pkgs.stdenv.hostPlatform then
      pkgs.runCommand "niks3d.toml" { } ''
        ${niks3d} check-config --no-secrets ${settingsFile}
        cp ${settingsFile} $out
      ''
    else
      settingsFile;

  databaseUnits = lib.optional cfg.database.createLocally "postgresql.target";

  # `niks3d-gc [--dry-run] [--force] [--older-than DUR] [--json]`: one collection by hand, as the service user
  # with the service's credentials, its output on the terminal.
  gcCommand = pkgs.writeShellScriptBin "niks3d-gc" ''
    exec ${lib.getExe' config.systemd.package "systemd-run"} --quiet --wait --pipe --collect \
      --service-type=exec --unit=niks3-gc-manual \
      ${
        lib.escapeShellArgs (
          [
            "--property=DynamicUser=yes"
            "--property=User=niks3"
            "--property=Group=niks3"
          ]
          ++ lib.optionals cfg.database.createLocally [
            "--property=After=postgresql.target"
            "--property=Requires=postgresql.target"
          ]
          ++ map (credential: "--property=LoadCredential=${credential}") rendered.loadCredential
        )
      } \
      -- ${niks3d} gc --config ${configFile} "$@"
  '';

  # Shared by niks3.service and niks3-gc.service: the sandbox of ./hardening.nix, narrowed further.
  commonServiceConfig = hardening // {
    ExecStartPre = "${niks3d} migrate --config ${configFile}";
    LoadCredential = rendered.loadCredential;

    # A fixed name with DynamicUser: PostgreSQL's peer authentication maps it to the role `niks3`.
    User = "niks3";
    Group = "niks3";
    DynamicUser = true;
    PrivateUsers = true;

    PrivateMounts = true;
    ProcSubset = "pid";
    RemoveIPC = true;
    SystemCallFilter = hardening.SystemCallFilter ++ [
      "~@privileged"
      "~@resources"
    ];
    SystemCallErrorNumber = "EPERM";
  };

  # Secrets in `settings` would end up in the Nix store; each has its own option.
  secretSettings = [
    {
      path = [ "signing" ];
      use = "services.niks3.signingKeyFiles";
    }
    {
      path = [ "tokens" ];
      use = "services.niks3.tokens";
    }
    {
      path = [
        "s3"
        "access_key_id_file"
      ];
      use = "services.niks3.s3.accessKeyIdFile";
    }
    {
      path = [
        "s3"
        "secret_access_key_file"
      ];
      use = "services.niks3.s3.secretAccessKeyFile";
    }
    {
      path = [
        "database"
        "password_file"
      ];
      use = "services.niks3.database.passwordFile";
    }
    {
      path = [
        "tls"
        "certificate_file"
      ];
      use = "services.niks3.tls.certificateFile";
    }
    {
      path = [
        "tls"
        "key_file"
      ];
      use = "services.niks3.tls.keyFile";
    }
    {
      path = [
        "tls"
        "client_ca_file"
      ];
      use = "services.niks3.tls.clientCaFile";
    }
  ];

  # The tokens that grant `scope` (admin grants everything).
  tokensWith =
    scope:
    lib.filterAttrs (_: token: lib.elem scope token.scopes || lib.elem "admin" token.scopes) cfg.tokens;
  badTokenNames = lib.filter (name: builtins.match "[A-Za-z0-9._-]{1,64}" name == null) (
    lib.attrNames cfg.tokens
  );
in
{
  options.services.niks3 = {
    enable = lib.mkEnableOption "niks3d, a Nix binary cache on S3 with garbage collection";

    package = mkOption {
      type = types.package;
      default = packageFor pkgs;
      defaultText = lib.literalMD "niks3d built from this flake's source with the system's `pkgs`";
      description = "The niks3d package; it provides `niks3d` (the server) and `niks3` (the client).";
    };

    settings = mkOption {
      description = ''
        niks3d's configuration, written to a TOML file in the Nix store. Every key that niks3d's
        `docs/configuration.md` describes may be set; the options below are the ones most deployments set.
        `null` leaves a key unset.

        Secrets do not belong here: use {option}`services.niks3.signingKeyFiles`,
        {option}`services.niks3.tokens`, {option}`services.niks3.s3.accessKeyIdFile`,
        {option}`services.niks3.s3.secretAccessKeyFile` and {option}`services.niks3.database.passwordFile`.
        The module fills in the corresponding keys with the names of systemd credentials.
      '';
      default = { };
      example = (import ./example.nix).services.niks3.settings;
      type = types.submodule {
        freeformType = format.type;
        options = {
          server = {
            listen = mkOption {
              type = types.nonEmptyListOf types.str;
              default = [ "127.0.0.1:5751" ];
              example = [
                "[::]:5751"
                "0.0.0.0:5751"
                "unix:/run/niks3/niks3.sock"
              ];
              description = ''
                Where niks3d listens: `host:port`, `[ipv6]:port` or `unix:/absolute/path`. These become the
                `ListenStream=` lines of `niks3.socket`; systemd binds them and passes them to the daemon.
                IPv6 sockets are IPv6-only, so list `0.0.0.0:port` as well for IPv4. systemd creates the
                directory of a Unix socket.
              '';
            };
            public_url = mkOption {
              type = types.nullOr types.str;
              default = null;
              example = "https://cache.example.org";
              description = "The URL clients use to reach this daemon. `null`: derived from the listen address.";
            };
            read_proxy = mkOption {
              type = types.enum [
                "public"
                "private"
                "off"
              ];
              default = "public";
              description = ''
                The read proxy, which serves the cache at the root of the daemon's URL: `public` for everyone,
                `private` only with a token that has the `read` scope, `off` not at all (clients then read the
                bucket directly).
              '';
            };
          };

          database.url = mkOption {
            type = types.str;
            default = localDatabaseUrl;
            example = "postgresql://niks3@db.example.org/niks3?sslmode=verify-full";
            description = ''
              PostgreSQL connection URL, without a password (see {option}`services.niks3.database.passwordFile`).
              The default reaches the database that {option}`services.niks3.database.createLocally` creates.
            '';
          };

          s3 = {
            bucket = mkOption {
              type = types.strMatching "[A-Za-z0-9._-]+";
              example = "nix-cache";
              description = "The bucket that holds the cache. It must exist; niks3d checks it at start.";
            };
            endpoint_url = mkOption {
              type = types.nullOr types.str;
              default = null;
              example = "https://s3.example.org";
              description = "The S3 endpoint with its scheme (MinIO, Garage, R2, ...). `null`: AWS.";
            };
            region = mkOption {
              type = types.str;
              default = "us-east-1";
              description = "The region the requests are signed for.";
            };
          };

          cache.priority = mkOption {
            type = types.ints.unsigned;
            default = 40;
            description = ''
              The `Priority` that `nix-cache-info` announces; among several substituters Nix prefers the lowest.
              cache.nixos.org announces 40.
            '';
          };

          cache.upstream_keys = mkOption {
            type = types.listOf types.str;
            default = [ "cache.nixos.org-1:6NCHdD59X431o0gWypbMrAURkbJ16ZPMQFGspcDShjY=" ];
            example = [ ];
            description = ''
              Public keys (`name:base64`) of the caches this one is used together with. A push does not upload
              a path signed by one of them: niks3d checks the signature and records the path as upstream, so
              Nix users must keep those caches among their substituters. `[ ]` makes every push upload its
              whole closure.
            '';
          };

          gc = {
            older_than = mkOption {
              type = duration;
              default = "30d";
              example = "14d";
              description = ''
                Retention: a pushed root is kept this long after its last push; pins are kept until deleted.
                A number of seconds or a number with a unit (`s`, `m`, `h`, `d`, `w`).
              '';
            };
            grace_period = mkOption {
              type = duration;
              default = "1h";
              description = "Objects younger than this are never deleted (protects uploads in progress).";
            };
          };
        };
      };
    };

    signingKeyFiles = mkOption {
      type = types.listOf secretPath;
      default = [ ];
      example = [ "/run/secrets/niks3/signing-key" ];
      description = ''
        Files with the secret keys that sign the narinfos, as `nix key generate-secret` writes them. Every key
        signs every narinfo, so a new key can be rolled out next to the old one. Each file is passed to the
        services with `LoadCredential=`; it is read by systemd, not by the service user, and never copied
        into the Nix store.
      '';
    };

    tokens = mkOption {
      type = types.attrsOf (
        types.submodule {
          options = {
            file = mkOption {
              type = secretPath;
              example = "/run/secrets/niks3/token-ci";
              description = ''
                File with the token: at least 16 printable ASCII characters, no whitespace
                (`openssl rand -hex 32` makes a good one). Passed with `LoadCredential=`.
              '';
            };
            scopes = mkOption {
              type = types.nonEmptyListOf (types.enum scopes);
              example = [
                "push"
                "pin"
              ];
              description = ''
                What the token may do: `read` (the private read proxy, listing pins and sessions), `push`,
                `pin` (create and delete pins), `gc` (start GC runs, delete paths), `metrics` (a private
                `/metrics`), `admin` (everything).
              '';
            };
          };
        }
      );
      default = { };
      example = lib.literalExpression ''
        {
          ci = { file = "/run/secrets/niks3/token-ci"; scopes = [ "push" "pin" ]; };
          admin = { file = "/run/secrets/niks3/token-admin"; scopes = [ "admin" ]; };
        }
      '';
      description = ''
        API tokens, by name (letters, digits, `.`, `_`, `-`; the name appears in logs). Without any, nobody
        can push.
      '';
    };

    oidc = mkOption {
      type = types.attrsOf (
        types.submodule {
          options = {
            issuer = mkOption {
              type = types.strMatching "https://.+";
              example = "https://token.actions.githubusercontent.com";
              description = "The tokens' `iss`, exactly; its discovery document and keys are fetched over HTTPS.";
            };
            audience = mkOption {
              type = types.str;
              example = "https://cache.example.org";
              description = "The `aud` every token must hold: what the CI job asks its token for (this cache's URL).";
            };
            nameClaim = mkOption {
              type = types.strMatching "[A-Za-z0-9_.-]{1,64}";
              default = "sub";
              example = "repository";
              description = ''
                The claim that names the identity (`oidc:<name>:<claim>`), which owns its upload sessions: pick
                one that differs between writers, as `repository` (GitHub) or `project_path` (GitLab).
              '';
            };
            rules = mkOption {
              type = types.nonEmptyListOf (
                types.submodule {
                  options = {
                    claims = mkOption {
                      type = types.attrsOf types.str;
                      example = {
                        repository_owner = "acme";
                        ref = "refs/heads/main";
                      };
                      description = "Claim name to shell glob; every one must match the token's claim.";
                    };
                    scopes = mkOption {
                      type = types.nonEmptyListOf (types.enum scopes);
                      example = [ "push" ];
                      description = "What a token matching every pattern may do; the scopes of every matching rule add up.";
                    };
                  };
                }
              );
              description = "Which tokens get which scopes; a token matching no rule is refused.";
            };
            caFile = mkOption {
              type = types.nullOr certificatePath;
              default = null;
              description = "PEM CA certificates to trust for the issuer's HTTPS instead of the system's (a private issuer).";
            };
          };
        }
      );
      default = { };
      example = lib.literalExpression ''
        {
          github = {
            issuer = "https://token.actions.githubusercontent.com";
            audience = "https://cache.example.org";
            nameClaim = "repository";
            rules = [ { claims = { repository_owner = "acme"; ref = "refs/heads/main"; }; scopes = [ "push" ]; } ];
          };
        }
      '';
      description = ''
        OIDC issuers whose ID tokens (GitHub Actions, GitLab CI) niks3d accepts as bearer tokens, by name
        (letters, digits, `.`, `_`, `-`): CI pushes without a stored secret (docs/auth.md, "OIDC ID tokens").
        Rendered as `[[oidc]]`; the other keys (`leeway`, `jwks_max_age`, `jwks_min_refresh`) keep their defaults.
      '';
    };

    s3 = {
      accessKeyIdFile = mkOption {
        type = types.nullOr secretPath;
        default = null;
        example = "/run/secrets/niks3/s3-access-key-id";
        description = ''
          File with the S3 access key id. Set it together with {option}`services.niks3.s3.secretAccessKeyFile`,
          or leave both unset to use the AWS default credential chain (for example an instance role).
        '';
      };
      secretAccessKeyFile = mkOption {
        type = types.nullOr secretPath;
        default = null;
        example = "/run/secrets/niks3/s3-secret-access-key";
        description = "File with the S3 secret access key; see {option}`services.niks3.s3.accessKeyIdFile`.";
      };
    };

    database = {
      createLocally = mkOption {
        type = types.bool;
        default = true;
        description = ''
          Create the database `niks3` and the role `niks3` on this machine's PostgreSQL
          ({option}`services.postgresql`), and connect over `/run/postgresql` with peer authentication. Set it
          to `false` to use another server through {option}`services.niks3.settings.database.url`.
        '';
      };
      passwordFile = mkOption {
        type = types.nullOr secretPath;
        default = null;
        example = "/run/secrets/niks3/database-password";
        description = "File with the database password, for an external database. Passed with `LoadCredential=`.";
      };
    };

    gc = {
      automatic = mkOption {
        type = types.bool;
        default = true;
        description = ''
          Run `niks3-gc.service` on a timer. Without it the service still exists:
          `systemctl start niks3-gc.service` runs one collection.
        '';
      };
      dates = mkOption {
        type = types.either types.singleLineStr (types.listOf types.str);
        apply = lib.toList;
        default = [ "daily" ];
        example = "Sun 04:00";
        description = "When to collect garbage, as systemd calendar events (see {manpage}`systemd.time(7)`).";
      };
      randomizedDelaySec = mkOption {
        type = types.singleLineStr;
        default = "1h";
        example = "45min";
        description = "A random delay of up to this long before each run (`RandomizedDelaySec=`).";
      };
      persistent = mkOption {
        type = types.bool;
        default = true;
        description = "Run at the next boot when the machine was off at the scheduled time (`Persistent=`).";
      };
    };

    # `niks3d fsck`: does the bucket agree with the database (docs/operations.md)? Off by default.
    fsck = {
      automatic = mkOption {
        type = types.bool;
        default = false;
        description = ''
          Run `niks3-fsck.service` on a timer. Without it the service still exists:
          `systemctl start niks3-fsck.service` runs one check. A failed unit means problems were found;
          the journal's `fsck.finished` entry counts them by kind.
        '';
      };
      dates = mkOption {
        type = types.either types.singleLineStr (types.listOf types.str);
        apply = lib.toList;
        default = [ "weekly" ];
        example = "Sat 03:00";
        description = "When to check, as systemd calendar events (see {manpage}`systemd.time(7)`).";
      };
      repair = mkOption {
        type = types.bool;
        default = false;
        description = "Pass `--repair`: fix what is always safe to fix (docs/operations.md lists it).";
      };
    };

    # HTTPS and client certificates (docs/auth.md, "Client certificates"); the rules and
    # settings.tls.client_certificates go in `settings.tls`.
    tls = {
      certificateFile = mkOption {
        type = types.nullOr certificatePath;
        default = null;
        example = "/var/lib/acme/cache.example.org/fullchain.pem";
        description = ''
          PEM file with the server certificate, then any intermediates. Setting it makes niks3d speak HTTPS on
          every TCP address of {option}`services.niks3.settings.server.listen` (Unix sockets stay plain HTTP).
          Passed with `LoadCredential=`; `systemctl reload niks3.service` makes niks3d read the credential again
          without closing a socket, and a restart copies a renewed file (socket activation refuses no connection
          meanwhile).
        '';
      };
      keyFile = mkOption {
        type = types.nullOr secretPath;
        default = null;
        example = "/var/lib/acme/cache.example.org/key.pem";
        description = "PEM file with the certificate's private key, unencrypted. Passed with `LoadCredential=`.";
      };
      clientCaFile = mkOption {
        type = types.nullOr certificatePath;
        default = null;
        example = "/etc/niks3/clients-ca.crt";
        description = ''
          PEM file with the CA certificates that sign client certificates. Set, niks3d asks clients for a
          certificate (`settings.tls.client_certificates`: `"optional"` or `"required"`), and the rules in
          `settings.tls.clients` give matching certificates scopes:
          `[ { subject = "CN=builder-*,O=Example"; scopes = [ "push" ]; } { uri = "spiffe://example.org/ci/*"; scopes = [ "push" ]; } ]`.
        '';
      };
    };

    openFirewall = mkOption {
      type = types.bool;
      default = false;
      description = "Open the TCP ports of {option}`services.niks3.settings.server.listen` in the firewall.";
    };
  };

  config = lib.mkIf cfg.enable {
    assertions = [
      {
        assertion = lib.versionAtLeast lib.trivial.release minimumRelease;
        message = tooOld;
      }
      {
        assertion = cfg.signingKeyFiles != [ ];
        message = ''
          services.niks3.signingKeyFiles is empty, but niks3d signs every narinfo it publishes. Create a key with
          `nix key generate-secret --key-name cache.example.org-1 > signing-key`, deploy the file outside the
          Nix store (sops-nix, agenix, or by hand with mode 0400) and list its path in signingKeyFiles.
        '';
      }
      {
        assertion = (cfg.s3.accessKeyIdFile == null) == (cfg.s3.secretAccessKeyFile == null);
        message = ''
          services.niks3.s3.accessKeyIdFile and services.niks3.s3.secretAccessKeyFile go together: set both
          for static keys, or neither to use the AWS default credential chain.
        '';
      }
      {
        assertion =
          cfg.database.createLocally -> lib.hasInfix "host=/run/postgresql" cfg.settings.database.url;
        message = ''
          services.niks3.database.createLocally creates the database on this machine and connects through
          /run/postgresql, but services.niks3.settings.database.url is "${cfg.settings.database.url}".
          Remove settings.database.url to use the local database, or set database.createLocally = false.
        '';
      }
      {
        assertion = cfg.database.createLocally -> cfg.database.passwordFile == null;
        message = ''
          services.niks3.database.createLocally uses peer authentication, which needs no password, but
          services.niks3.database.passwordFile is set. Unset passwordFile, or set database.createLocally = false
          to use an external database with that password.
        '';
      }
      {
        assertion = cfg.settings.server.read_proxy == "private" -> tokensWith "read" != { };
        message = ''
          services.niks3.settings.server.read_proxy is "private", but no token in services.niks3.tokens has the
          "read" or "admin" scope, so nobody could read the cache through the proxy. Add such a token, or set
          read_proxy to "public" or "off" (clients then read the bucket directly).
        '';
      }
      {
        assertion = (cfg.settings.server.metrics or null) == "private" -> tokensWith "metrics" != { };
        message = ''
          services.niks3.settings.server.metrics is "private", but no token in services.niks3.tokens has the
          "metrics" or "admin" scope, so nothing could scrape /metrics. Add such a token for the scraper, or set
          metrics to "public" or "off".
        '';
      }
      {
        assertion = badTokenNames == [ ];
        message = ''
          services.niks3.tokens: the names ${lib.concatStringsSep ", " badTokenNames} are not valid; a token name
          is 1 to 64 letters, digits, '.', '_' or '-'.
        '';
      }
      {
        assertion = !(cfg.settings ? oidc && cfg.oidc != { });
        message = ''
          services.niks3.oidc and services.niks3.settings.oidc are both set; use one of them.
        '';
      }
      {
        assertion = lib.all (name: builtins.match "[A-Za-z0-9._-]{1,64}" name != null) (
          lib.attrNames cfg.oidc
        );
        message = ''
          services.niks3.oidc: the names ${lib.concatStringsSep ", " (lib.attrNames cfg.oidc)} must each be 1-64
          letters, digits, '.', '_' or '-'.
        '';
      }
      {
        assertion = (cfg.tls.certificateFile == null) == (cfg.tls.keyFile == null);
        message = ''
          services.niks3.tls.certificateFile and services.niks3.tls.keyFile go together: set both for HTTPS, or
          neither for plain HTTP.
        '';
      }
      {
        assertion = (cfg.tls.clientCaFile != null || cfg.settings ? tls) -> cfg.tls.certificateFile != null;
        message = ''
          services.niks3.tls.clientCaFile or services.niks3.settings.tls is set, but client certificates need
          HTTPS: set services.niks3.tls.certificateFile and services.niks3.tls.keyFile.
        '';
      }
      {
        assertion = cfg.gc.automatic -> cfg.gc.dates != [ ];
        message = ''
          services.niks3.gc.dates is empty, so the GC timer would never fire. Set dates (for example "daily"),
          or set gc.automatic = false and run `systemctl start niks3-gc.service` yourself.
        '';
      }
    ]
    ++ map (secret: {
      assertion = !lib.hasAttrByPath secret.path cfg.settings;
      message = ''
        services.niks3.settings.${lib.concatStringsSep "." secret.path} is written by the module. Set
        ${secret.use} instead: the file is then passed with LoadCredential= and never copied into the Nix store.
      '';
    }) secretSettings;

    environment.systemPackages = [
      cfg.package
      gcCommand
    ];
    # For `niks3d check-config --no-secrets` and anyone looking for the file; the units name the store path.
    environment.etc."niks3d/niks3d.toml".source = configFile;

    networking.firewall.allowedTCPPorts = lib.mkIf cfg.openFirewall (lib.unique rendered.tcpPorts);

    services.postgresql = lib.mkIf cfg.database.createLocally {
      enable = true;
      ensureDatabases = [ "niks3" ];
      ensureUsers = [
        {
          name = "niks3";
          ensureDBOwnership = true;
        }
      ];
    };

    systemd.sockets.niks3 = {
      description = "niks3d Nix binary cache socket";
      wantedBy = [ "sockets.target" ];
      socketConfig = {
        ListenStream = rendered.listenStreams;
        # Each address means what it says, as when niks3d binds it itself.
        BindIPv6Only = "ipv6-only";
        FreeBind = true;
      };
    };

    systemd.services.niks3 = {
      description = "niks3d Nix binary cache";
      requires = [ "niks3.socket" ] ++ databaseUnits;
      wants = [ "network-online.target" ];
      after = [
        "niks3.socket"
        "network-online.target"
      ]
      ++ databaseUnits;
      serviceConfig = lib.mkMerge [
        commonServiceConfig
        {
          # READY=1 comes after the migrations, the bucket check and the sites; WATCHDOG=1 only while the
          # database answers.
          Type = "notify";
          # The migrations ran in ExecStartPre: serve only checks the schema, so they do not run twice.
          ExecStart = "${niks3d} serve --no-migrate --config ${configFile}";
          # SIGHUP reloads the [tls] files without closing a listener, between RELOADING=1 and READY=1
          # (docs/auth.md, "Client certificates").
          ExecReload = "${pkgs.coreutils}/bin/kill -HUP $MAINPID";
          WatchdogSec = lib.mkDefault "30s";
          Restart = "on-failure";
          RestartSec = lib.mkDefault "5s";
        }
      ];
    };

    systemd.services.niks3-gc = {
      description = "niks3d garbage collection";
      requires = databaseUnits;
      wants = [ "network-online.target" ];
      after = [ "network-online.target" ] ++ databaseUnits;
      startAt = lib.optionals cfg.gc.automatic cfg.gc.dates;
      # A configuration change must not start a collection.
      restartIfChanged = false;
      serviceConfig = lib.mkMerge [
        commonServiceConfig
        {
          Type = "oneshot";
          ExecStart = "${niks3d} gc --config ${configFile}";
          # The run's STATUS= lines (phase, counts) show in `systemctl status niks3-gc.service`.
          NotifyAccess = "main";
        }
      ];
    };

    systemd.timers.niks3-gc = lib.mkIf cfg.gc.automatic {
      timerConfig = {
        RandomizedDelaySec = cfg.gc.randomizedDelaySec;
        Persistent = cfg.gc.persistent;
      };
    };

    systemd.services.niks3-fsck = {
      description = "niks3d consistency check of the bucket and the database";
      requires = databaseUnits;
      wants = [ "network-online.target" ];
      after = [ "network-online.target" ] ++ databaseUnits;
      startAt = lib.optionals cfg.fsck.automatic cfg.fsck.dates;
      restartIfChanged = false;
      serviceConfig = lib.mkMerge [
        commonServiceConfig
        {
          Type = "oneshot";
          ExecStart =
            "${niks3d} fsck --config ${configFile}" + lib.optionalString cfg.fsck.repair " --repair";
          NotifyAccess = "main";
        }
      ];
    };

    systemd.timers.niks3-fsck = lib.mkIf cfg.fsck.automatic {
      timerConfig = {
        RandomizedDelaySec = "1h";
        Persistent = true;
      };
    };
  };
}
