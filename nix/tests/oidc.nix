# OIDC ID tokens: a fake issuer on the server (a small Python script serving a discovery document and its keys
# over HTTPS, and minting RS256 tokens as a CI provider would), services.niks3.oidc trusting it with its own CA
# (caFile), `niks3 push --oidc env` with a token of the allowed repository publishing the closure, and a token
# whose repository claim matches no rule refused with the reason, publishing nothing.
#
# The same steps without KVM: tests/e2e/test_oidc.py
# (test_a_github_token_for_an_allowed_repository_pushes, which also pushes with --oidc env, and
# test_every_bad_token_is_a_401_naming_the_reason_and_nothing_is_written). The issuer script itself was run
# outside a VM against niks3d's verifier (an accepted and a refused token).
{ pkgs, self }:
let
  inherit (pkgs) lib;
  common = import ./lib/common.nix { inherit pkgs self; };
  inherit (common.paths) app refused;

  issuerPort = 8443;
  # An IP rather than localhost, so that the daemon and the issuer agree on the address family.
  issuerUrl = "https://127.0.0.1:${toString issuerPort}";
  audience = "https://niks3.vmtest";

  # Test-only files of the fake issuer, made at build time: a CA, the issuer's HTTPS certificate signed by it,
  # and the RSA key that signs the tokens (in the Nix store: it is the fake issuer's, and this is a test).
  issuerFiles = pkgs.runCommand "niks3-vmtest-oidc-issuer" { nativeBuildInputs = [ pkgs.openssl ]; } ''
    mkdir "$out" && cd "$out"
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 3650 \
      -subj "/CN=niks3 vmtest OIDC CA" -keyout ca.key -out ca.crt \
      -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign
    openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -subj /CN=issuer \
      -keyout tls.key -out tls.csr
    printf '%s\n' "subjectAltName=IP:127.0.0.1" "extendedKeyUsage=serverAuth" > tls.ext
    openssl x509 -req -in tls.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 3650 -extfile tls.ext -out tls.crt
    openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out signing.key
    rm ca.key tls.csr tls.ext
  '';

  # `oidc-issuer serve` answers /.well-known/openid-configuration and /jwks; `oidc-issuer mint CLAIMS` prints a
  # token with those claims (and iss, iat, nbf, exp). Only the standard library, and openssl for the signature.
  issuerScript = pkgs.writeText "oidc-issuer.py" ''
    import base64
    import http.server
    import json
    import os
    import ssl
    import subprocess
    import sys
    import time

    ISSUER = os.environ["OIDC_ISSUER"]
    FILES = os.environ["OIDC_FILES"]
    OPENSSL = os.environ["OIDC_OPENSSL"]
    KID = "vmtest-1"


    def b64url(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


    def openssl(*args: str, data: bytes = b"") -> bytes:
        return subprocess.run([OPENSSL, *args], input=data, capture_output=True, check=True).stdout


    def jwks() -> dict:
        modulus = openssl("rsa", "-in", f"{FILES}/signing.key", "-noout", "-modulus").decode()
        n = bytes.fromhex(modulus.strip().split("=", 1)[1])
        key = {"kty": "RSA", "kid": KID, "alg": "RS256", "use": "sig", "n": b64url(n), "e": b64url(b"\x01\x00\x01")}
        return {"keys": [key]}


    def mint(claims: dict) -> str:
        now = int(time.time())
        payload = {"iss": ISSUER, "iat": now, "nbf": now, "exp": now + 600, **claims}
        header = {"alg": "RS256", "typ": "JWT", "kid": KID}
        signing_input = b64url(json.dumps(header).encode()) + "." + b64url(json.dumps(payload).encode())
        signature = openssl("dgst", "-sha256", "-sign", f"{FILES}/signing.key", data=signing_input.encode())
        return signing_input + "." + b64url(signature)


    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            documents = {
                "/.well-known/openid-configuration": {"issuer": ISSUER, "jwks_uri": ISSUER + "/jwks"},
                "/jwks": jwks(),
            }
            document = documents.get(self.path)
            body = json.dumps(document).encode()
            self.send_response(200 if document is not None else 404)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)


    def serve(port: int) -> None:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(f"{FILES}/tls.crt", f"{FILES}/tls.key")
        server = http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler)
        server.socket = context.wrap_socket(server.socket, server_side=True)
        server.serve_forever()


    if sys.argv[1] == "serve":
        serve(int(sys.argv[2]))
    else:
        print(mint(json.loads(sys.argv[2])))
  '';
  issuer = pkgs.writeShellScriptBin "oidc-issuer" ''
    export OIDC_ISSUER=${issuerUrl} OIDC_FILES=${issuerFiles} OIDC_OPENSSL=${lib.getExe pkgs.openssl}
    exec ${lib.getExe pkgs.python3} ${issuerScript} "$@"
  '';
in
pkgs.testers.runNixOSTest {
  name = "niks3-oidc";

  nodes = {
    s3 = common.s3Node;
    server = {
      imports = [ common.serverNode ];
      services.niks3.oidc.vmtest = {
        issuer = issuerUrl;
        inherit audience;
        nameClaim = "repository";
        rules = [
          {
            claims = {
              repository = "acme/app";
              ref = "refs/heads/main";
            };
            scopes = [
              "push"
              "read"
            ];
          }
        ];
        caFile = "${issuerFiles}/ca.crt";
      };
      systemd.services.oidc-issuer = {
        description = "fake OIDC issuer of the VM test";
        wantedBy = [ "multi-user.target" ];
        before = [ "niks3.service" ];
        serviceConfig.ExecStart = "${issuer}/bin/oidc-issuer serve ${toString issuerPort}";
      };
      environment.systemPackages = [ issuer ];
    };
  };

  testScript =
    { nodes, ... }:
    let
      settings = nodes.server.services.niks3.settings;
    in
    # python
    ''
      ${common.pythonHelpers settings}
      ISSUER = "${issuerUrl}"
      CA = "${issuerFiles}/ca.crt"


      def token_for(repository: str, ref: str = "refs/heads/main") -> str:
          claims = {"sub": f"repo:{repository}:ref:{ref}", "aud": "${audience}", "repository": repository, "ref": ref}
          return server.succeed(f"oidc-issuer mint {shlex.quote(json.dumps(claims))}").strip()


      def push_oidc(token: str, path: str) -> str:
          return f"NIKS3_ID_TOKEN={shlex.quote(token)} niks3 push --server {LOCAL_URL} --oidc env --no-progress {path} 2>&1"


      start_all()
      setup_s3()
      server.wait_for_unit("oidc-issuer.service")
      server.wait_for_open_port(${toString issuerPort})
      server.wait_for_unit("niks3.socket")

      with subtest("the issuer serves its discovery document over HTTPS signed by its own CA"):
          discovery = json.loads(server.succeed(f"curl --fail --silent --cacert {CA} {ISSUER}/.well-known/openid-configuration"))
          assert discovery["issuer"] == ISSUER, discovery
          server.succeed(f"curl --fail --silent --max-time 120 {LOCAL_URL}/health")
          server.wait_for_unit("niks3.service")

      with subtest("a token whose repository claim matches no rule is refused with the reason, publishing nothing"):
          token = token_for("evil/app")
          out = server.fail(push_oidc(token, "${refused}"))
          assert "match no rule" in out and "evil/app" in out, out
          assert token not in out, "the token was printed"
          assert narinfo_key("${refused}") not in bucket_keys(), "a refused push published a narinfo"

      with subtest("niks3 push --oidc env with a token of acme/app on main publishes the closure"):
          server.succeed(push_oidc(token_for("acme/app"), "${app}"))
          assert narinfo_key("${app}") in bucket_keys(), sorted(bucket_keys())
          assert_closed_bucket()
          owners = server.succeed(
              "runuser -u postgres -- psql -d niks3 -tAc 'SELECT DISTINCT token_name FROM upload_sessions'"
          )
          assert owners.split() == ["oidc:vmtest:acme/app"], owners
          server.fail("journalctl --unit=niks3.service | grep -q Traceback")
    '';
}
