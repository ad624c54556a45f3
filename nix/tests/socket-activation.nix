# niks3.socket and niks3.service under systemd: the sockets of every configured address are systemd's, the unit
# is active only once the daemon sent READY=1 (never while its bucket is unreachable), a crashed daemon and one
# whose database stopped answering (no WATCHDOG=1) are restarted, SIGTERM stops it cleanly, and a GC run leaves
# its summary in the journal as structured fields.
#
# The same steps without KVM, playing systemd with systemd-socket-activate and a NOTIFY_SOCKET:
# tests/server/test_socket_activation.py (test_socket_activation_notify_and_watchdog).
{ pkgs, self }:
let
  inherit (pkgs) lib;
  common = import ./lib/common.nix { inherit pkgs self; };
in
pkgs.testers.runNixOSTest {
  name = "niks3-socket-activation";

  nodes = {
    s3 = common.s3Node;
    server = {
      imports = [ common.serverNode ];
      # Short enough that a stalled database is noticed within the test's patience.
      systemd.services.niks3.serviceConfig.WatchdogSec = "6s";
    };
    client = common.clientNode;
  };

  testScript =
    { nodes, ... }:
    let
      inherit (nodes.server.services.niks3) settings;
      unixListen = lib.findFirst (lib.hasPrefix "unix:") null settings.server.listen;
    in
    # python
    ''
      ${common.pythonHelpers settings}
      import time

      LISTEN = ${builtins.toJSON settings.server.listen}
      UNIX_SOCKET = "${lib.removePrefix "unix:" unixListen}"


      def restarts() -> int:
          return int(unit_properties(server, "niks3.service", "NRestarts")["NRestarts"])


      def wait_for_restart(before: int) -> None:
          """Until systemd restarted niks3.service at least once more and it is active again. Between failed
          attempts the unit may pass through `failed` for an instant, which would end wait_for_unit."""
          server.wait_until_succeeds(
              f"test $(systemctl show --property=NRestarts --value niks3.service) -gt {before}", timeout=180
          )
          server.wait_until_succeeds("systemctl is-active --quiet niks3.service", timeout=300)


      start_all()
      setup_s3()
      server.wait_for_unit("niks3.socket")

      with subtest("niks3.socket holds every configured address; nothing has started the daemon yet"):
          listening = server.succeed("systemctl show niks3.socket --property=Listen")
          for address in LISTEN:
              assert address.removeprefix("unix:") in listening, f"{address} is not a socket of niks3.socket: {listening}"
          state = unit_properties(server, "niks3.service", "ActiveState")["ActiveState"]
          assert state == "inactive", f"niks3.service is {state} before any request"

      with subtest("while the bucket cannot be reached the daemon runs, but the unit never becomes active"):
          s3.succeed("systemctl stop garage.service")
          server.succeed("systemctl start --no-block niks3.service")
          seen: set[tuple[str, str, bool]] = set()
          deadline = time.monotonic() + 30
          while time.monotonic() < deadline:
              props = unit_properties(server, "niks3.service", "ActiveState", "SubState", "MainPID")
              assert props["ActiveState"] != "active", f"niks3.service is active without its bucket: {props}"
              seen.add((props["ActiveState"], props["SubState"], props["MainPID"] != "0"))
              time.sleep(0.5)
          assert ("activating", "start", True) in seen, f"the daemon never ran while the bucket was down: {seen}"

      with subtest("once the bucket answers, READY=1 makes the unit active, with the daemon's status line"):
          s3.succeed("systemctl start garage.service")
          server.wait_for_unit("niks3.service")
          props = unit_properties(server, "niks3.service", "Type", "StatusText")
          assert props["Type"] == "notify", props
          assert props["StatusText"].startswith("serving on"), props
          assert journal_events(server, "niks3.service", "server.ready"), "no server.ready entry in the journal"

      with subtest("every kind of address answers: IPv4 from the client, IPv6 loopback, the Unix socket"):
          client.succeed(f"curl --fail --silent --ipv4 {SERVER_URL}/health")
          server.succeed(f"curl --fail --silent --ipv6 'http://[::1]:{PORT}/health'")
          server.succeed(f"curl --fail --silent --unix-socket {UNIX_SOCKET} http://localhost/health")

      with subtest("a daemon killed by a signal is restarted"):
          before = restarts()
          server.succeed("systemctl kill --signal=SIGKILL niks3.service")
          wait_for_restart(before)
          client.succeed(f"curl --fail --silent {SERVER_URL}/health")

      with subtest("the watchdog restarts a daemon whose database stopped answering"):
          before = restarts()
          server.succeed("systemctl kill --signal=SIGSTOP postgresql.service")
          server.wait_until_succeeds("journalctl --unit=niks3.service | grep -q 'Watchdog timeout'", timeout=120)
          server.succeed("systemctl kill --signal=SIGCONT postgresql.service")
          wait_for_restart(before)
          client.succeed(f"curl --fail --silent {SERVER_URL}/health")

      with subtest("a GC run leaves one journal entry with its summary as fields"):
          server.succeed("systemctl start niks3-gc.service")
          events = journal_events(server, "niks3-gc.service", "gc.finished")
          assert len(events) == 1, f"{len(events)} gc.finished entries"
          event = events[0]
          assert event["_SYSTEMD_UNIT"] == "niks3-gc.service", event
          assert event["SYSLOG_IDENTIFIER"] == "niks3d", event
          assert event["NIKS3_STATE"] == "finished", event
          for field in ("NIKS3_RUN_ID", "NIKS3_OBJECTS_DELETED", "NIKS3_BYTES_FREED", "NIKS3_SECONDS"):
              assert field in event, f"{field} is missing: {event}"
          assert event["NIKS3_OBJECTS_DELETED"] == "0", f"a run over an empty cache deleted objects: {event}"

      with subtest("SIGTERM stops the daemon cleanly, and the socket starts it again"):
          server.succeed("systemctl stop niks3.service")
          props = unit_properties(server, "niks3.service", "ActiveState", "Result")
          assert props == {"ActiveState": "inactive", "Result": "success"}, props
          assert journal_events(server, "niks3.service", "server.stopped"), "no server.stopped entry"
          server.succeed(f"curl --fail --silent --max-time 120 {LOCAL_URL}/health")
          server.wait_for_unit("niks3.service")
    '';
}
