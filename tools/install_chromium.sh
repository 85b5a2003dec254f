#!/usr/bin/env bash
# Debian's headless Chromium, for the test that renders `dvc plots show`'s HTML offline
# (tests/integration/test_dvc_plots.py). `make test` runs this first. It installs only when
# chromium is missing and we are root with apt-get; otherwise, or when apt-get fails, it
# says why and goes on: that test then fails and names this script.
set -uo pipefail
command -v chromium >/dev/null 2>&1 && exit 0
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
    echo "tools/install_chromium.sh: chromium is missing; install Debian's package" \
         "'chromium' (needs root and apt-get)" >&2
    exit 0
fi
echo "tools/install_chromium.sh: installing Debian's chromium (once)" >&2
export DEBIAN_FRONTEND=noninteractive
{ apt-get update -qq && apt-get install -y -qq --no-install-recommends chromium >/dev/null; } ||
    echo "tools/install_chromium.sh: apt-get could not install chromium" >&2
exit 0
