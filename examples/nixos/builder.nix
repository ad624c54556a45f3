# A self-hosted CI runner (or any builder) that uploads everything it builds to a niks3d cache, as it builds it.
# The jobs need to do nothing: Nix's post-build hook queues every built path, and the niks3-upload service
# uploads the queue (docs/nixos.md, "Uploading what a machine builds").
#
# In a flake: imports = [ niks3d.nixosModules.upload ./builder.nix ];
{ ... }:
{
  services.niks3-upload = {
    enable = true;
    serverUrl = "https://cache.example.org";
    # A token with the `push` scope, deployed outside the Nix store (sops-nix, agenix, or by hand).
    tokenFile = "/run/secrets/niks3-push-token";
    # Also upload what the runner substituted from other caches or fetched (the hook sees only builds).
    scanStore = true;
  };

  # Substitute from the same cache, so that a job only builds what changed.
  nix.settings = {
    extra-substituters = [ "https://cache.example.org" ];
    extra-trusted-public-keys = [ "cache.example.org-1:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=" ];
  };

  # A GitHub Actions runner on this machine (services.github-runners) then needs nothing niks3-specific:
  # services.github-runners.ci = { enable = true; url = "https://github.com/org/repo"; tokenFile = "..."; };
}
