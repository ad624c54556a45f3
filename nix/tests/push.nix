# Push a closure with `niks3 push`, then substitute it on a second machine with `nix copy`, from S3 and through
# the read proxy, with signatures checked (and refused under the wrong key).
#
# The same steps without KVM: tests/e2e/test_push.py
# (test_pushed_closures_are_substituted_by_nix_with_signatures_checked,
# test_tokens_without_the_right_scope_are_refused_clearly).
{ pkgs, self }:
let
  common = import ./lib/common.nix { inherit pkgs self; };
  inherit (common.paths) app shared refused;
in
pkgs.testers.runNixOSTest {
  name = "niks3-push";

  nodes = {
    s3 = common.s3Node;
    server = {
      imports = [ common.serverNode ];
      # `complete` downloads, decompresses (zstandard) and hashes every NAR before it signs (pynacl): both
      # libraries then run under the unit's MemoryDenyWriteExecute.
      services.niks3.settings.s3.verify = "full";
    };
    client = common.clientNode;
  };

  testScript =
    { nodes, ... }:
    let
      settings = nodes.server.services.niks3.settings;
    in
    # python
    ''
      ${common.pythonHelpers settings}
      S3_URL = "s3://${settings.s3.bucket}?endpoint=${settings.s3.endpoint_url}&region=${settings.s3.region}"
      PRIORITY = ${toString settings.cache.priority}

      start_all()
      setup_s3()
      server.wait_for_unit("niks3.socket")

      with subtest("the first request starts niks3.service, which is active once it sent READY=1"):
          server.succeed(f"curl --fail --silent --max-time 120 {LOCAL_URL}/health")
          server.wait_for_unit("niks3.service")

      with subtest("nix-cache-info announces the configured priority, in the bucket and through the proxy"):
          assert f"Priority: {PRIORITY}" in bucket_text("nix-cache-info"), bucket_text("nix-cache-info")
          info = client.succeed(f"curl --fail --silent {PROXY_URL}/nix-cache-info")
          assert f"Priority: {PRIORITY}" in info, f"nix-cache-info through the proxy: {info!r}"

      with subtest("a push with a token the server does not know is refused and publishes nothing"):
          out = server.fail(push("${refused}", token="/etc/niks3/token-wrong"))
          assert "refused the token" in out, f"the refusal does not say what is wrong: {out}"
          assert server.succeed("cat /etc/niks3/token-wrong") not in out, "the token was printed"
          assert narinfo_key("${refused}") not in bucket_keys(), "a refused push published a narinfo"

      with subtest("niks3 push uploads the closure and publishes signed narinfos, references first"):
          server.succeed(push("${app}"))
          keys = bucket_keys()
          for path in ("${app}", "${shared}"):
              assert narinfo_key(path) in keys, f"no narinfo for {path} in the bucket: {sorted(keys)}"
          fields = narinfo_fields(bucket_text(narinfo_key("${app}")))
          assert fields["StorePath"] == "${app}", fields
          assert fields["Sig"].startswith(PUBLIC_KEY.split(":")[0] + ":"), fields
          assert_closed_bucket()

      with subtest("the client substitutes from S3, trusting the server's key, and refuses an impostor's"):
          client.succeed(nix_copy(S3_URL, "${app}", PUBLIC_KEY, "/tmp/from-s3", env=S3_ENV))
          client.succeed("grep -q 'the pushed root' /tmp/from-s3${app}")
          client.succeed("test -f /tmp/from-s3${shared}")
          out = client.fail(nix_copy(S3_URL, "${app}", IMPOSTOR_KEY, "/tmp/from-s3-impostor", env=S3_ENV))
          assert "signature" in out, f"refused for another reason than the signature: {out}"
          client.fail("test -e /tmp/from-s3-impostor${app}")

      with subtest("the client substitutes through the read proxy, with the same checks"):
          client.succeed(nix_copy(PROXY_URL, "${app}", PUBLIC_KEY, "/tmp/from-proxy"))
          client.succeed("grep -q 'the pushed root' /tmp/from-proxy${app}")
          out = client.fail(nix_copy(PROXY_URL, "${app}", IMPOSTOR_KEY, "/tmp/from-proxy-impostor"))
          assert "signature" in out, f"refused for another reason than the signature: {out}"

      with subtest("the daemon ran as the dynamic user niks3, with peer authentication and W^X memory"):
          props = unit_properties(
              server, "niks3.service", "DynamicUser", "PrivateUsers", "MemoryDenyWriteExecute", "User", "NRestarts"
          )
          assert props == {
              "DynamicUser": "yes",
              "PrivateUsers": "yes",
              "MemoryDenyWriteExecute": "yes",
              "User": "niks3",
              "NRestarts": "0",
          }, props
          roles = server.succeed(
              "runuser -u postgres -- psql -d niks3 -tAc "
              "\"SELECT DISTINCT usename FROM pg_stat_activity WHERE datname = 'niks3' AND backend_type = 'client backend'\""
          )
          assert roles.split() == ["niks3"], f"connections to the niks3 database: {roles!r}"
          server.fail("journalctl --unit=niks3.service | grep -q Traceback")

      with subtest("after a restart the proxy still serves the closure"):
          server.succeed("systemctl restart niks3.service")
          server.wait_for_unit("niks3.service")
          client.succeed(nix_copy(PROXY_URL, "${app}", PUBLIC_KEY, "/tmp/after-restart"))
          client.succeed("grep -q 'the pushed root' /tmp/after-restart${app}")
    '';
}
