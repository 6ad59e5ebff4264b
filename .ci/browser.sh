#!/usr/bin/env bash
# Installs Debian's chromium and chromium-driver for tests/browser.rs when they are missing.
set -euo pipefail

need_pkgs=()
command -v chromium >/dev/null || need_pkgs+=(chromium)
command -v chromedriver >/dev/null || need_pkgs+=(chromium-driver)
if [ ${#need_pkgs[@]} -gt 0 ]; then
  echo "installing ${need_pkgs[*]}"
  sudo_cmd=""; [ "$(id -u)" -eq 0 ] || sudo_cmd="sudo"
  $sudo_cmd apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq --no-install-recommends "${need_pkgs[@]}" >/dev/null
fi
echo "browser: $(chromium --version 2>/dev/null || echo '?'); $(chromedriver --version 2>/dev/null || echo '?')"
