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
  # The VM tests whose node configurations are evaluated too (scenarios `vm-<test>-<node>`), see vmScenarios.
  vmTests ? ./tests,
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
    runCommand =
      name: env: script:
      fakeDerivation name (env // { inherit script; });
    writeShellScriptBin = name: text: fakeDerivation name { inherit text; };
    # Named by the examples and the VM tests.
    minio-client = fakeDerivation "minio-client" { };
    garage_2 = fakeDerivation "garage-2.1.0" { meta.mainProgram = "garage"; };
    curl = fakeDerivation "curl" { };
    coreutils = fakeDerivation "coreutils" { };
    openssl = fakeDerivation "openssl" { meta.mainProgram = "openssl"; };
    python3 = fakeDerivation "python3" { meta.mainProgram = "python3"; };
    sqlite = fakeDerivation "sqlite" { meta.mainProgram = "sqlite3"; };
    writeText = name: text: fakeDerivation name { inherit text; };
    testers.runNixOSTest = test: test;
    inherit lib;
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
      # Read by services.niks3-upload (nix/upload.nix).
      nix.package = mkOption { default = fakeDerivation "nix" { }; };
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

  # With a key, so that a configuration importing it again (the VM tests' nodes do) gets it once.
  niks3Module = {
    key = "niks3d/nix/module.nix";
    imports = [ (lib.modules.importApply ./module.nix { packageFor = _: package; }) ];
  };
  uploadModule = {
    key = "niks3d/nix/upload.nix";
    imports = [ (lib.modules.importApply ./upload.nix { packageFor = _: package; }) ];
  };

  # A whole host's configuration goes through a root freeform type (the options of the rest of NixOS are not
  # declared here), and lib hands every unmatched definition to it, even one under services.niks3. So a
  # misspelt option of ours would pass unnoticed: these are found by walking the definitions of our own option
  # trees and naming each that is not a declared option.
  strayDefinitions =
    prefix: options: config:
    lib.concatLists (
      lib.mapAttrsToList (
        name: value:
        let
          path = prefix ++ [ name ];
        in
        if !(options ? ${name}) then
          [ (lib.showOption path) ]
        else if lib.isOption options.${name} then
          [ ]
        else if lib.isAttrs value then
          strayDefinitions path options.${name} value
        else
          [ ]
      ) config
    );
  ourTrees = [
    "niks3"
    "niks3-upload"
    "garage"
  ];
  strayOf =
    evaluated:
    lib.concatMap (
      tree:
      lib.optionals (evaluated.options.services ? ${tree} && evaluated.config.services ? ${tree}) (
        strayDefinitions [
          "services"
          tree
        ] evaluated.options.services.${tree} evaluated.config.services.${tree}
      )
    ) ourTrees;
  noStrays =
    evaluated:
    let
      stray = strayOf evaluated;
    in
    if stray == [ ] then
      evaluated.config
    else
      throw "the option(s) ${lib.concatStringsSep ", " stray} do not exist (misspelt, or removed from the module)";

  evaluate =
    modules:
    let
      config = noStrays (
        lib.evalModules {
          modules = [
            otherModules
            niks3Module
            { _module.args.pkgs = pkgs; }
          ]
          ++ modules;
        }
      );
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

  # Every node of every VM test in ./tests (each regular *.nix file), evaluated as a whole host (the rest of
  # NixOS loose, our modules and a stub of services.garage strict, no stray definitions), and the test script
  # rendered against the evaluated nodes, so that a script naming an option that is not there fails too.
  self.nixosModules = {
    default = niks3Module;
    upload = uploadModule;
  };
  vmTestFiles = lib.filterAttrs (name: kind: kind == "regular" && lib.hasSuffix ".nix" name) (
    builtins.readDir vmTests
  );
  evaluateNode =
    node:
    noStrays (
      lib.evalModules {
        modules = [
          { _module.freeformType = types.lazyAttrsOf types.anything; }
          otherModules
          ./eval-garage-stub.nix
          {
            _module.args = {
              inherit pkgs;
              nodes = { };
            };
          }
          node
        ];
      }
    );
  vmTest =
    file:
    let
      test = import (vmTests + "/${file}") {
        inherit pkgs self;
      };
      nodes = lib.mapAttrs (_: evaluateNode) test.nodes;
      script =
        if lib.isFunction test.testScript then test.testScript { inherit nodes; } else test.testScript;
      # What a node's evaluation must get through: our modules' values and everything they define.
      forced = lib.mapAttrs (_: config: {
        inherit (config) assertions warnings systemd;
        etc = config.environment.etc or { };
        ours = lib.filterAttrs (name: _: name != "garage") (
          lib.filterAttrs (name: _: lib.elem name ourTrees) config.services
        );
        garage = config.services.garage.settings or { };
      }) nodes;
    in
    {
      inherit nodes;
      script = builtins.seq (builtins.deepSeq forced forced) script;
    };
  vmScenarios = lib.concatMapAttrs (
    file: _:
    let
      name = lib.removeSuffix ".nix" file;
      test = vmTest file;
    in
    lib.mapAttrs' (node: config: {
      name = "vm-${name}-${node}";
      value = {
        expect = "ok";
        result = {
          failedAssertions = map (a: a.message) (lib.filter (a: !a.assertion) config.assertions);
          inherit (config) warnings;
          scriptLength = lib.stringLength test.script;
        };
      };
    }) test.nodes
  ) vmTestFiles;
  attemptVm =
    scenario:
    let
      forced = builtins.tryEval (builtins.deepSeq scenario.result scenario.result);
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
if inspect == null then
  lib.mapAttrs (_: attempt) all // lib.mapAttrs (_: attemptVm) vmScenarios
else if vmScenarios ? ${inspect} then
  vmScenarios.${inspect}.result
else
  evaluate all.${inspect}.modules
