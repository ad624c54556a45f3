{
  description = "niks3d: a self-hosted Nix binary cache on S3, with PostgreSQL-tracked garbage collection";

  inputs.nixpkgs.url = "github:NixOS/nixpkgs/nixos-unstable";

  # This file only wires; the content is in nix/: package.nix, module.nix, checks.nix, devshell.nix, apps.nix.
  outputs =
    { self, nixpkgs }:
    let
      inherit (nixpkgs) lib;
      systems = [
        "x86_64-linux"
        "aarch64-linux"
      ];
      forAllSystems = f: lib.genAttrs systems (system: f nixpkgs.legacyPackages.${system});
      appsFor =
        pkgs:
        pkgs.callPackage ./nix/apps.nix {
          niks3d = self.packages.${pkgs.stdenv.hostPlatform.system}.default;
        };
    in
    {
      packages = forAllSystems (pkgs: rec {
        niks3d = pkgs.callPackage ./nix/package.nix { };
        default = niks3d;
      });

      overlays.default = final: _prev: { niks3d = final.callPackage ./nix/package.nix { }; };

      # The package defaults to niks3d built from this flake's source with the system's own pkgs.
      nixosModules.default = lib.modules.importApply ./nix/module.nix {
        packageFor = pkgs: pkgs.callPackage ./nix/package.nix { };
      };

      # services.niks3-upload, for builders and CI runners: the post-build hook and `niks3 agent`.
      nixosModules.upload = lib.modules.importApply ./nix/upload.nix {
        packageFor = pkgs: pkgs.callPackage ./nix/package.nix { };
      };

      checks = forAllSystems (pkgs: import ./nix/checks.nix { inherit self pkgs; });

      devShells = forAllSystems (pkgs: {
        default = pkgs.callPackage ./nix/devshell.nix {
          niks3d = self.packages.${pkgs.stdenv.hostPlatform.system}.default;
        };
      });

      apps = forAllSystems (pkgs: {
        inherit (appsFor pkgs) dev;
      });

      formatter = forAllSystems (pkgs: (appsFor pkgs).formatter);
    };
}
