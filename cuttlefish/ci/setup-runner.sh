#!/usr/bin/env bash
# Prepare a GitHub-hosted ubuntu-24.04 runner (or any Debian/Ubuntu KVM host) for Cuttlefish:
# KVM for the runner user, the Cuttlefish host tools (cuttlefish-base: cvd, cvdnetwork tap devices)
# from Google's Artifact Registry, jq. Unverified on a real runner from here (no KVM in our CI box):
# repository URL and package names as android-cuttlefish's README gives them.
set -euo pipefail

# GitHub runners have /dev/kvm, but only for root/kvm; open it to the runner user.
echo 'KERNEL=="kvm", GROUP="kvm", MODE="0666", OPTIONS+="static_node=kvm"' |
  sudo tee /etc/udev/rules.d/99-kvm4all.rules >/dev/null
sudo udevadm control --reload-rules
sudo udevadm trigger --name-match=kvm
[ -r /dev/kvm ] && [ -w /dev/kvm ] || { echo "setup-runner: /dev/kvm not usable" >&2; exit 1; }

sudo curl -fsSL https://us-apt.pkg.dev/doc/repo-signing-key.gpg -o /etc/apt/trusted.gpg.d/artifact-registry.asc
sudo chmod a+r /etc/apt/trusted.gpg.d/artifact-registry.asc
echo "deb https://us-apt.pkg.dev/projects/android-cuttlefish-artifacts android-cuttlefish main" |
  sudo tee /etc/apt/sources.list.d/artifact-registry.list >/dev/null
sudo apt-get update -q
sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -q cuttlefish-base cuttlefish-user jq

# Groups take effect in new logins: the workflow runs the e2e script under `sg cvdnetwork`.
sudo usermod -aG kvm,cvdnetwork,render "$USER"
for dev in /dev/vhost-net /dev/vhost-vsock /dev/net/tun; do
  if [ -e "$dev" ]; then sudo chmod 0666 "$dev"; fi
done
