# What services.niks3 writes, computed from its options with builtins only (no nixpkgs):
#
#   settings       the attrset that becomes niks3d.toml: the `settings` option without nulls (TOML has no null),
#                  plus the secret keys, each naming a systemd credential rather than a path
#   credentials    [ { id; path; } ]: what LoadCredential= loads, in the order the TOML names them (the [tls]
#                  files too: the service user reads them only from its credentials directory)
#   loadCredential the same as "id:path" strings
#   listenStreams  settings.server.listen as ListenStream= values ("unix:/run/x.sock" becomes "/run/x.sock")
#   tcpPorts       the ports of the TCP listen addresses, for the firewall
#
# nix/module.nix renders with this function, and tests/nix_module/ evaluates it with nix-instantiate on the
# documented example (./example.nix), so that the TOML checked there by `niks3d check-config` is the TOML the
# module writes. The argument is the value of services.niks3 (missing options count as unset).
cfg:
let
  settings = cfg.settings or { };
  s3 = cfg.s3 or { };
  database = cfg.database or { };
  tokens = cfg.tokens or { };
  signingKeyFiles = cfg.signingKeyFiles or [ ];
  tls = cfg.tls or { };
  oidc = cfg.oidc or { };

  isSet = value: value != null;
  nullNames = attrs: builtins.filter (name: attrs.${name} == null) (builtins.attrNames attrs);

  dropNulls =
    value:
    if builtins.isAttrs value then
      builtins.mapAttrs (_: dropNulls) (builtins.removeAttrs value (nullNames value))
    else if builtins.isList value then
      map dropNulls (builtins.filter isSet value)
    else
      value;

  credential = id: path: { inherit id path; };

  signingCredentials = builtins.genList (
    i: credential "signing-key-${toString (i + 1)}" (builtins.elemAt signingKeyFiles i)
  ) (builtins.length signingKeyFiles);

  tokenNames = builtins.attrNames tokens;
  tokenCredentials = map (name: credential "token-${name}" tokens.${name}.file) tokenNames;

  # The single-file secrets: the credential id, the TOML key that names it, and the option's path (or null).
  fileSecrets = section: builtins.filter (secret: isSet secret.path) section;
  s3Secrets = fileSecrets [
    {
      id = "s3-access-key-id";
      key = "access_key_id_file";
      path = s3.accessKeyIdFile or null;
    }
    {
      id = "s3-secret-access-key";
      key = "secret_access_key_file";
      path = s3.secretAccessKeyFile or null;
    }
  ];
  databaseSecrets = fileSecrets [
    {
      id = "database-password";
      key = "password_file";
      path = database.passwordFile or null;
    }
  ];
  # [tls]: written only when a certificate is set (the module asserts that the key comes with it).
  tlsFiles = fileSecrets [
    {
      id = "tls-certificate";
      key = "certificate_file";
      path = tls.certificateFile or null;
    }
    {
      id = "tls-key";
      key = "key_file";
      path = tls.keyFile or null;
    }
    {
      id = "tls-client-ca";
      key = "client_ca_file";
      path = tls.clientCaFile or null;
    }
  ];
  tlsEnabled = (tls.certificateFile or null) != null;
  namedBy =
    secrets:
    builtins.listToAttrs (
      map (secret: {
        name = secret.key;
        value = secret.id;
      }) secrets
    );

  credentials =
    signingCredentials
    ++ tokenCredentials
    ++ map (secret: credential secret.id secret.path) (
      s3Secrets ++ databaseSecrets ++ (if tlsEnabled then tlsFiles else [ ])
    );

  # The secret keys of the TOML, each the id of the credential that holds the file.
  secretSettings = {
    signing = (settings.signing or { }) // {
      key_files = map (c: c.id) signingCredentials;
    };
    tokens = map (name: {
      inherit name;
      file = "token-${name}";
      inherit (tokens.${name}) scopes;
    }) tokenNames;
    s3 = (settings.s3 or { }) // namedBy s3Secrets;
    database = (settings.database or { }) // namedBy databaseSecrets;
  }
  // (if tlsEnabled then { tls = (settings.tls or { }) // namedBy tlsFiles; } else { })
  # services.niks3.oidc: no secrets, so plain [[oidc]] tables (the CA file may be in the Nix store).
  // (
    if oidc != { } then
      {
        oidc = map (name: {
          inherit name;
          inherit (oidc.${name}) issuer audience rules;
          name_claim = oidc.${name}.nameClaim or "sub";
          ca_file = oidc.${name}.caFile or null;
        }) (builtins.attrNames oidc);
      }
    else
      { }
  );

  listen = settings.server.listen or [ "127.0.0.1:5751" ];
  isUnix = address: builtins.substring 0 5 address == "unix:";
  unixPath = address: builtins.substring 5 (builtins.stringLength address) address;
  tcpPort =
    address:
    let
      m = builtins.match ".*:([0-9]+)" address;
    in
    if m == null then null else builtins.fromJSON (builtins.head m);
in
{
  settings = dropNulls (settings // secretSettings);
  inherit credentials;
  loadCredential = map (c: "${c.id}:${c.path}") credentials;
  listenStreams = map (address: if isUnix address then unixPath address else address) listen;
  tcpPorts = builtins.filter isSet (map tcpPort (builtins.filter (a: !isUnix a) listen));
}
