# The machine-specific part of the example host: replace it with the one `nixos-generate-config` writes for your
# machine. These placeholders (an ext4 root and an EFI system partition, booted with systemd-boot) only make the
# example a complete host that evaluates and builds: `nix build .#nixosConfigurations.cache.config.system.build.toplevel`.
{
  fileSystems."/" = {
    device = "/dev/disk/by-label/nixos";
    fsType = "ext4";
  };
  fileSystems."/boot" = {
    device = "/dev/disk/by-label/boot";
    fsType = "vfat";
  };
  boot.loader.systemd-boot.enable = true;
  boot.loader.efi.canTouchEfiVariables = true;
}
