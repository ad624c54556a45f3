# Evaluates services.niks3 with nixpkgs' lib alone: no nixpkgs package set, no NixOS, nothing built.
#
#   nix-instantiate --eval --strict --json nix/eval-module.nix --arg lib 'import /path/to/nixpkgs/lib'
#   ... --argstr inspect bad-duration     (one scenario, with its error message if it has one)
#
# `pkgs` is a stub (formats.toml with the real TOML value type and a `generate` that returns a derivation-like
# value; runCommand likewise; the packages the examples name), the package is a stub, and the options of other modules that services.niks3
# sets (systemd units, PostgreSQL, firewall, assertions, ...) are declared loosely. Each scenario is evaluated
# on its own; the result lists, per scenario, the assertions that failed, the warnings, the TOML value the
# module renders and the units it defines, or the evaluation error. The flake runs it as checks.module-eval
# with the flake's nixpkgs, which also checks that every scenario fails or passes as expected.
{
  lib,
  scenarios ? import ./eval-scenarios.nix,
  # The name of one scenario: evaluate only it, without catching errors, to read the error message.
  inspect ? null,
}:
let
  inherit (lib) mkOption types;

  storePath = name: "/nix/store/00000000000000000000000000000000-${name}";
  fakeDerivation =
    name: extra:
    {
      type = "derivation";
      inherit name;
      outPath = storePath name;
      outputs = [ "out" ];
    }
    // extra;

  package = fakeDerivation "niks3d-0.0.0" { meta.mainProgram = "niks3d"; };

  tomlValue =
    types.oneOf [
      types.bool
      types.int
      types.float
      types.str
      types.path
      (types.attrsOf tomlValue)
      (types.listOf tomlValue)
    ]
    // {
      description = "TOML value";
    };

  pkgs = {
    formats.toml = { }: {
      type = tomlValue;
      generate = name: value: fakeDerivation name { inherit value; };
    };
    runCommand = name: env: script: fakeDerivation name (env // { inherit script; });
    writeShellScriptBin = name: text: fakeDerivation name { inherit text; };
    # Named by the examples.
    minio-client = fakeDerivation "minio-client" { };
    stdenv = {
      buildPlatform.canExecute = _: true;
      hostPlatform = { };
    };
  };

  # The options of other NixOS modules that services.niks3 defines values for.
  loose = mkOption {
    type = types.attrsOf (types.attrsOf types.anything);
    default = { };
  };
  otherModules = {
    options = {
      assertions = mkOption {
        type = types.listOf types.unspecified;
        default = [ ];
      };
      warnings = mkOption {
        type = types.listOf types.str;
        default = [ ];
      };
      environment.systemPackages = mkOption {
        type = types.listOf types.unspecified;
        default = [ ];
      };
      environment.etc = mkOption {
        type = types.attrsOf (types.attrsOf types.anything);
        default = { };
      };
      networking.firewall.allowedTCPPorts = mkOption {
        type = types.listOf types.port;
        default = [ ];
      };
      services.postgresql = mkOption {
        type = types.attrsOf types.anything;
        default = { };
      };
      systemd = {
        package = mkOption { default = fakeDerivation "systemd" { }; };
        services = loose;
        sockets = loose;
        timers = loose;
      };
    };
  };

  niks3Module = lib.modules.importApply ./module.nix { packageFor = _: package; };

  evaluate =
    modules:
    let
      inherit
        (lib.evalModules {
          modules = [
            otherModules
            niks3Module
            { _module.args.pkgs = pkgs; }
          ]
          ++ modules;
        })
        config
        ;
      cfg = config.services.niks3;
      rendered = import ./render.nix cfg;
    in
    {
      failedAssertions = map (a: a.message) (lib.filter (a: !a.assertion) config.assertions);
      inherit (config) warnings;
      toml = rendered.settings;
      inherit (rendered) loadCredential listenStreams;
      firewall = config.networking.firewall.allowedTCPPorts;
      postgresql = config.services.postgresql;
      etc = config.environment.etc;
      gcCommand = (lib.elemAt config.environment.systemPackages 1).text;
      units = {
        "niks3.socket" = config.systemd.sockets.niks3 or null;
        "niks3.service" = config.systemd.services.niks3 or null;
        "niks3-gc.service" = config.systemd.services.niks3-gc or null;
        "niks3-gc.timer" = config.systemd.timers.niks3-gc or null;
      };
    };

  # An evaluation error (a type error, a missing required option) is a result too, not an abort.
  attempt =
    scenario:
    let
      result = evaluate scenario.modules;
      forced = builtins.tryEval (builtins.deepSeq result result);
      outcome =
        if !forced.success then
          "error"
        else if forced.value.failedAssertions != [ ] then
          "assertion"
        else
          "ok";
    in
    {
      inherit outcome;
      inherit (scenario) expect;
      asExpected = outcome == scenario.expect;
    }
    // (if forced.success then forced.value else { });

  all = scenarios {
    inherit lib;
    example = import ./example.nix;
  };
in
if inspect == null then lib.mapAttrs (_: attempt) all else evaluate all.${inspect}.modules
