# The options of nixpkgs' services.garage (nixos/modules/services/web-servers/garage.nix), declared with their
# types for ./eval-module.nix, which has nixpkgs' lib but not NixOS. A stub, not the module: nothing here is
# configured, only checked. It has every option the current module declares, no more: enable, package (no
# default: it must be set), environmentFile, extraEnvironment, logLevel, and settings (a freeform TOML submodule
# without a default, declaring only metadata_dir and data_dir). Everything else in settings is Garage's own
# configuration file, checked by Garage when it starts.
{ lib, ... }:
let
  inherit (lib) mkOption types;
in
{
  options.services.garage = {
    enable = lib.mkEnableOption "Garage";
    package = mkOption { type = types.package; };
    logLevel = mkOption {
      type = types.enum [
        "error"
        "warn"
        "info"
        "debug"
        "trace"
      ];
      default = "info";
    };
    extraEnvironment = mkOption {
      type = types.attrsOf types.str;
      default = { };
    };
    environmentFile = mkOption {
      type = types.nullOr types.path;
      default = null;
    };
    settings = mkOption {
      type = types.submodule {
        freeformType = types.attrsOf types.anything;
        options = {
          metadata_dir = mkOption {
            type = types.path;
            default = "/var/lib/garage/meta";
          };
          data_dir = mkOption {
            type = types.either types.path (types.listOf types.attrs);
            default = "/var/lib/garage/data";
          };
        };
      };
    };
  };
}
