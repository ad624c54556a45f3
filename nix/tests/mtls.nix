# HTTPS and client certificates: niks3d terminates TLS on its socket-activated TCP listeners with files passed by
# LoadCredential=, `niks3 push` pushes with a client certificate and no token, a certificate outside the rules is
# refused with the reason, the client reads the private proxy with curl and a certificate and with Nix and a
# token (trusting the CA with ssl-cert-file), and `systemctl reload` re-reads the files in the same process.
#
# The same steps without KVM: tests/e2e/test_mtls.py
# (test_a_client_certificate_pushes_and_reads_and_every_other_certificate_is_refused,
# test_sighup_reloads_the_tls_files_without_closing_the_listener).
{ pkgs, self }:
let
  common = import ./lib/common.nix { inherit pkgs self; };
  inherit (common.paths) app refused;

  # Test-only certificates, made at build time: a CA, the server's certificate, two clients the rules admit (by
  # subject, by URI subjectAltName) and one from the same CA that no rule matches.
  certs = pkgs.runCommand "niks3-vmtest-certs" { nativeBuildInputs = [ pkgs.openssl ]; } ''
    mkdir "$out" && cd "$out"
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 3650 \
      -subj "/O=niks3 vmtest/CN=niks3 vmtest CA" -keyout ca.key -out ca.crt \
      -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign
    leaf() {
      openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -subj "$2" -keyout "$1.key" -out "$1.csr"
      printf '%s\n' "$3" "extendedKeyUsage=$4" > "$1.ext"
      openssl x509 -req -in "$1.csr" -CA ca.crt -CAkey ca.key -CAcreateserial -days 3650 -extfile "$1.ext" -out "$1.crt"
      rm "$1.csr" "$1.ext"
    }
    leaf server "/CN=server" "subjectAltName=DNS:server,DNS:localhost,IP:127.0.0.1" serverAuth
    leaf builder "/O=niks3 vmtest/CN=builder-1" "basicConstraints=CA:FALSE" clientAuth
    leaf reader "/CN=reader" "subjectAltName=URI:spiffe://niks3.test/reader/client" clientAuth
    leaf intern "/O=niks3 vmtest/CN=intern" "basicConstraints=CA:FALSE" clientAuth
    rm ca.key
  '';
  # Key files outside the Nix store, as a secrets manager deploys them (certificates may stay in the store).
  keyFile = source: {
    inherit source;
    mode = "0400";
  };
in
pkgs.testers.runNixOSTest {
  name = "niks3-mtls";

  nodes = {
    s3 = common.s3Node;
    server = {
      imports = [ common.serverNode ];
      services.niks3 = {
        tls = {
          certificateFile = "${certs}/server.crt";
          keyFile = "/etc/niks3/tls-key";
          clientCaFile = "${certs}/ca.crt";
        };
        settings = {
          server.read_proxy = "private";
          tls.clients = [
            {
              subject = "CN=builder-*,O=niks3 vmtest";
              scopes = [
                "push"
                "read"
              ];
            }
            {
              uri = "spiffe://niks3.test/reader/*";
              scopes = [ "read" ];
            }
          ];
        };
      };
      environment.etc = {
        "niks3/tls-key" = keyFile "${certs}/server.key";
        "niks3/builder.key" = keyFile "${certs}/builder.key";
        "niks3/intern.key" = keyFile "${certs}/intern.key";
      };
    };
    client = {
      imports = [ common.clientNode ];
      environment.etc = {
        "niks3/reader.key" = keyFile "${certs}/reader.key";
        "niks3/netrc" = {
          text = "machine server\npassword ${common.tokens.ci}\n";
          mode = "0400";
        };
      };
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
      CERTS = "${certs}"
      CA = f"{CERTS}/ca.crt"
      HTTPS_LOCAL = f"https://127.0.0.1:{PORT}"
      HTTPS_SERVER = f"https://server:{PORT}"
      APP_NARINFO = narinfo_key("${app}")


      def push_with(cert: str, path: str) -> str:
          return (
              f"niks3 push --server {HTTPS_LOCAL} --ca-file {CA} --client-cert {CERTS}/{cert}.crt "
              f"--client-key /etc/niks3/{cert}.key --no-progress {path} 2>&1"
          )


      def status_of(machine, args: str) -> str:
          return machine.succeed(f"curl --silent --output /dev/null --write-out '%{{http_code}}' {args} || true").strip()


      start_all()
      setup_s3()
      server.wait_for_unit("niks3.socket")

      with subtest("an HTTPS request starts niks3.service; the TCP port speaks no plain HTTP, the Unix socket does"):
          server.succeed(f"curl --fail --silent --max-time 120 --cacert {CA} {HTTPS_LOCAL}/health")
          server.wait_for_unit("niks3.service")
          server.fail(f"curl --fail --silent --max-time 10 {LOCAL_URL}/health")
          server.succeed("curl --fail --silent --unix-socket /run/niks3/niks3.sock http://localhost/health")

      with subtest("a certificate from the right CA that no rule matches is refused with the reason"):
          out = server.fail(push_with("intern", "${refused}"))
          assert "'CN=intern,O=niks3 vmtest' matches no [[tls.clients]] rule" in out, out
          assert narinfo_key("${refused}") not in bucket_keys(), "a refused push published a narinfo"

      with subtest("niks3 push with a client certificate and no token publishes the closure"):
          server.succeed(push_with("builder", "${app}"))
          assert APP_NARINFO in bucket_keys(), sorted(bucket_keys())
          assert_closed_bucket()
          owners = server.succeed(
              "runuser -u postgres -- psql -d niks3 -tAc 'SELECT DISTINCT token_name FROM upload_sessions'"
          )
          assert owners.split("\n")[0] == "cert:CN=builder-1,O=niks3 vmtest", owners

      with subtest("the client reads the private proxy with curl and a certificate, and is refused without one"):
          cert = f"--cacert {CA} --cert {CERTS}/reader.crt --key /etc/niks3/reader.key"
          narinfo = client.succeed(f"curl --fail --silent {cert} {HTTPS_SERVER}/{APP_NARINFO}")
          assert "StorePath: ${app}" in narinfo, narinfo
          assert status_of(client, f"--cacert {CA} {HTTPS_SERVER}/{APP_NARINFO}") == "401"
          assert status_of(client, f"{HTTPS_SERVER}/{APP_NARINFO}") == "000"  # the system does not trust the CA

      with subtest("Nix reads the private proxy over HTTPS with a token, trusting the CA with ssl-cert-file"):
          client.succeed(
              f"env XDG_CACHE_HOME=$(mktemp -d) nix copy --from {HTTPS_SERVER} --to local?root=/tmp/from-https "
              f"--option ssl-cert-file {CA} --option netrc-file /etc/niks3/netrc "
              f"--option trusted-public-keys {shlex.quote(PUBLIC_KEY)} ${app} 2>&1"
          )
          client.succeed("grep -q 'the pushed root' /tmp/from-https${app}")

      with subtest("systemctl reload re-reads the TLS files in the same process, between RELOADING=1 and READY=1"):
          before = unit_properties(server, "niks3.service", "MainPID")["MainPID"]
          server.succeed("systemctl reload niks3.service")
          server.wait_until_succeeds("journalctl --unit=niks3.service NIKS3_EVENT=tls.reloaded | grep -q reloaded")
          server.wait_for_unit("niks3.service")
          assert unit_properties(server, "niks3.service", "MainPID")["MainPID"] == before
          server.succeed(f"curl --fail --silent --cacert {CA} {HTTPS_LOCAL}/health")
          server.fail("journalctl --unit=niks3.service | grep -q Traceback")
    '';
}
