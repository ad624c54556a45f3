# Upload as you build: a builder with services.niks3-upload builds a derivation, the path reaches the cache
# without any manual push, and a client substitutes it with signatures checked (and refuses it under the wrong
# key). Also: the agent's Type=notify status line, its journal fields, and the queue while the server is down.
#
# The same steps without KVM: tests/e2e/test_upload_agent.py
# (test_the_hook_fills_the_queue_and_the_agent_publishes_every_built_path,
# test_while_the_server_is_down_the_queue_grows_and_it_drains_when_the_server_is_back).
{ pkgs, self }:
let
  common = import ./lib/common.nix { inherit pkgs self; };
  # Built on the builder, inside the VM: no nixpkgs needed, /bin/sh is in NixOS's build sandbox.
  buildExpr = salt: ''
    derivation {
      name = "niks3-upload-${salt}";
      system = builtins.currentSystem;
      builder = "/bin/sh";
      args = [ "-c" "echo built on the builder ${salt} > $out" ];
    }
  '';
in
pkgs.testers.runNixOSTest {
  name = "niks3-upload";

  nodes = {
    s3 = common.s3Node;
    server = common.serverNode;
    builder = {
      imports = [
        common.clientNode
        self.nixosModules.upload
      ];
      services.niks3-upload = {
        enable = true;
        serverUrl = "http://server:5751";
        tokenFile = "/etc/niks3-upload/token";
        extraArgs = [
          "--max-backoff"
          "2"
        ];
      };
      environment.etc."niks3-upload/token" = {
        text = common.tokens.ci;
        mode = "0400";
      };
      environment.etc."niks3-test/one.nix".text = buildExpr "one";
      environment.etc."niks3-test/two.nix".text = buildExpr "two";
    };
    client = common.clientNode;
  };

  testScript =
    { nodes, ... }:
    let
      settings = nodes.server.services.niks3.settings;
      hook = nodes.builder.services.niks3-upload.hook;
    in
    # python
    ''
      ${common.pythonHelpers settings}
      QUEUE = "/var/lib/niks3-upload/queue.sqlite"


      def build(name: str) -> str:
          return builder.succeed(f"nix-build /etc/niks3-test/{name}.nix --no-out-link 2>/dev/null").strip()


      def waiting() -> str:
          return builder.succeed(f"niks3 queue --queue {QUEUE}")


      start_all()
      setup_s3()
      server.wait_for_unit("niks3.socket")
      server.succeed(f"curl --fail --silent --max-time 120 {LOCAL_URL}/health")

      with subtest("the agent is a Type=notify service with the queue length in its status"):
          builder.wait_for_unit("niks3-upload.service")
          props = unit_properties(builder, "niks3-upload.service", "Type", "StatusText", "User")
          assert props["Type"] == "notify", props
          assert "0 waiting, 0 failed" in props["StatusText"], props
          conf = builder.succeed("cat /etc/nix/nix.conf")
          assert "post-build-hook = ${hook}" in conf, conf

      with subtest("a build on the builder reaches the cache without a push"):
          one = build("one")
          builder.wait_until_succeeds(f"niks3 queue --queue {QUEUE} | grep -q '^0 waiting, 0 failed'", timeout=120)
          assert narinfo_key(one) in bucket_keys(), f"{one} was not published: {sorted(bucket_keys())}"
          assert_closed_bucket()
          events = journal_events(builder, "niks3-upload.service", "agent_published")
          assert events and events[-1].get("NIKS3_ROOTS") == "1", events

      with subtest("a second machine substitutes it with signatures checked, and refuses another key"):
          client.succeed(nix_copy(PROXY_URL, one, PUBLIC_KEY, "/tmp/good"))
          out = client.fail(nix_copy(PROXY_URL, one, IMPOSTOR_KEY, "/tmp/bad"))
          assert "signature" in out or "trusted" in out, out

      with subtest("while the server is down, builds are queued; they are published once it is back"):
          server.systemctl("stop niks3.socket niks3.service")
          two = build("two")
          assert two in waiting(), waiting()
          builder.wait_until_succeeds(
              "journalctl --unit=niks3-upload.service --output=json NIKS3_EVENT=agent_unreachable | grep -q .",
              timeout=120,
          )
          server.systemctl("start niks3.socket")
          builder.wait_until_succeeds(f"niks3 queue --queue {QUEUE} | grep -q '^0 waiting, 0 failed'", timeout=180)
          assert narinfo_key(two) in bucket_keys()
          client.succeed(nix_copy(PROXY_URL, two, PUBLIC_KEY, "/tmp/good2"))

      with subtest("SIGTERM stops the agent cleanly"):
          builder.systemctl("stop niks3-upload.service")
          result = unit_properties(builder, "niks3-upload.service", "Result")["Result"]
          assert result == "success", result
    '';
}
