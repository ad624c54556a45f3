# Garbage collection through the timer's service: a root older than the retention is collected with what only it
# needed, a pinned root and the dependency it shares are kept, no narinfo is left dangling, and the run's
# summary reaches the journal as structured fields. Deleting the pin lets the next run collect the rest.
#
# The same steps without KVM: tests/e2e/test_gc.py.
{ pkgs, self }:
let
  common = import ./lib/common.nix { inherit pkgs self; };
  inherit (common.paths)
    shared
    old
    oldOnly
    kept
    ;
in
pkgs.testers.runNixOSTest {
  name = "niks3-gc";

  nodes = {
    s3 = common.s3Node;
    server = {
      imports = [ common.serverNode ];
      services.niks3 = {
        # A retention the test can wait out, and no grace period, so the run decides on reachability alone.
        settings.gc = {
          older_than = "5s";
          grace_period = "0s";
        };
        gc = {
          dates = "Sun 04:00";
          randomizedDelaySec = "10min";
        };
      };
    };
    client = common.clientNode;
  };

  testScript =
    { nodes, ... }:
    let
      cfg = nodes.server.services.niks3;
    in
    # python
    ''
      ${common.pythonHelpers cfg.settings}
      import time

      OLDER_THAN = "${cfg.settings.gc.older_than}"
      UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


      def seconds(duration: str) -> int:
          return int(duration[:-1]) * UNITS[duration[-1]] if duration[-1] in UNITS else int(duration)


      def collect() -> None:
          """One run of the service the timer starts; `systemctl start` returns when the run ended."""
          server.succeed("systemctl start niks3-gc.service")
          result = unit_properties(server, "niks3-gc.service", "Result")["Result"]
          assert result == "success", f"niks3-gc.service ended with {result}"


      start_all()
      setup_s3()
      server.wait_for_unit("niks3.socket")
      server.succeed(f"curl --fail --silent --max-time 120 {LOCAL_URL}/health")
      server.wait_for_unit("niks3.service")

      with subtest("niks3-gc.timer runs on the configured calendar, persistent, with a randomized delay"):
          server.wait_for_unit("niks3-gc.timer")
          timer = unit_properties(server, "niks3-gc.timer", "TimersCalendar", "RandomizedDelayUSec", "Persistent")
          for date in ${builtins.toJSON cfg.gc.dates}:
              normalized = server.succeed(
                  f"systemd-analyze calendar '{date}' | sed -n 's/^ *Normalized form: //p'"
              ).strip()
              assert f"OnCalendar={normalized} ;" in timer["TimersCalendar"], timer
          assert timer["RandomizedDelayUSec"] == "${cfg.gc.randomizedDelaySec}", timer
          assert timer["Persistent"] == "${if cfg.gc.persistent then "yes" else "no"}", timer

      with subtest("an expiring root and a pinned root that share a dependency are pushed"):
          server.succeed(push("${old}"))
          server.succeed(push("--pin release", "${kept}"))
          keys = bucket_keys()
          for path in ("${old}", "${oldOnly}", "${kept}", "${shared}"):
              assert narinfo_key(path) in keys, f"{path} was not published"
          old_nars = {narinfo_fields(bucket_text(narinfo_key(p)))["URL"] for p in ("${old}", "${oldOnly}")}
          assert_closed_bucket()
          # Both roots are now older than the retention; only the pin keeps one of them.
          time.sleep(seconds(OLDER_THAN) + 2)

      with subtest("the run collects the expired root and what only it needed, and keeps the pinned closure"):
          collect()
          keys = bucket_keys()
          for path in ("${old}", "${oldOnly}"):
              assert narinfo_key(path) not in keys, f"{path} outlived its retention"
          for nar in old_nars:
              assert nar not in keys, f"{nar} outlived the narinfo that named it"
          for path in ("${kept}", "${shared}"):
              assert narinfo_key(path) in keys, f"{path} is pinned or needed by a pin, but was collected"
          assert_closed_bucket()

      with subtest("the pinned closure still substitutes with signatures checked; the collected root is gone"):
          client.succeed(nix_copy(PROXY_URL, "${kept}", PUBLIC_KEY, "/tmp/kept"))
          client.succeed("test -f /tmp/kept${shared}")
          status = client.succeed(
              f"curl --silent --output /dev/null --write-out '%{{http_code}}' {PROXY_URL}/{narinfo_key('${old}')}"
          )
          assert status == "404", f"the collected narinfo answers {status}"

      with subtest("the run's summary is one journal entry with structured fields"):
          events = journal_events(server, "niks3-gc.service", "gc.finished")
          assert len(events) == 1, f"{len(events)} gc.finished entries"
          event = events[0]
          assert event["SYSLOG_IDENTIFIER"] == "niks3d", event
          assert event["NIKS3_STATE"] == "finished", event
          assert event["NIKS3_PATHS_DELETED"] == "2", event
          assert event["NIKS3_NARINFOS_DELETED"] == "2", event
          assert int(event["NIKS3_OBJECTS_DELETED"]) >= 4, event
          assert int(event["NIKS3_BYTES_FREED"]) > 0, event

      with subtest("a second run finds nothing to delete"):
          collect()
          event = journal_events(server, "niks3-gc.service", "gc.finished")[-1]
          assert event.get("NIKS3_PATHS_DELETED", "0") == "0", event
          assert narinfo_key("${kept}") in bucket_keys()

      with subtest("once the pin is deleted, the next run collects the rest"):
          server.succeed(f"niks3 pins delete release --server {LOCAL_URL} --token-file /etc/niks3/token-ci")
          collect()
          keys = bucket_keys()
          assert not [k for k in keys if k.endswith(".narinfo") or k.startswith("nar/")], sorted(keys)
          assert "nix-cache-info" in keys, "the collector deleted nix-cache-info"
    '';
}
