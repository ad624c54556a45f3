# A complete NixOS host that serves a niks3d cache: `nixos-rebuild switch --flake .#cache`. Replace
# ./hardware-configuration.nix (placeholder disks and boot loader) with your machine's, and the platform below.
{
  inputs = {
    nixpkgs.url = "github:NixOS/nixpkgs/nixos-unstable";
    # Where the niks3d flake lives; `follows` builds it with this host's nixpkgs.
    niks3d.url = "git+https://git.example.org/niks3d";
    niks3d.inputs.nixpkgs.follows = "nixpkgs";
  };

  outputs =
    { nixpkgs, niks3d, ... }:
    {
      nixosConfigurations.cache = nixpkgs.lib.nixosSystem {
        modules = [
          { nixpkgs.hostPlatform = "x86_64-linux"; }
          ./hardware-configuration.nix
          niks3d.nixosModules.default
          ./configuration.nix
          # Or, for a bucket and a database elsewhere:
          # ./external-s3.nix
        ];
      };
    };
}
