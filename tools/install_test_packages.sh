#!/usr/bin/env bash
# The Debian packages the tests need, installed once when missing (`make test` runs this):
#   chromium     renders `dvc plots show`'s HTML offline (tests/integration/test_dvc_plots.py)
#   postgresql   a private cluster for tuning workers (tests/integration/test_tune_postgres.py)
#   libegl1 ...  what PySide6's Qt loads for `tlearn gui` offscreen (tests/unit/test_gui.py)
#   systemd      systemd-analyze checks deploy/'s units (tests/unit/test_deploy.py)
# It installs only as root with apt-get; otherwise, or when apt-get fails, it says which
# packages are missing and goes on: the tests that need them then fail or skip and say why.
set -uo pipefail
PACKAGES=(chromium postgresql libegl1 libgl1 libfontconfig1 libxkbcommon0 libglib2.0-0
          libdbus-1-3 systemd)
missing=()
for package in "${PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" ||
        missing+=("$package")
done
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
    echo "tools/install_test_packages.sh: missing Debian packages: ${missing[*]}" \
         "(installing them needs root and apt-get)" >&2
    exit 0
fi
echo "tools/install_test_packages.sh: installing ${missing[*]} (once)" >&2
export DEBIAN_FRONTEND=noninteractive
{ apt-get update -qq && apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null; } ||
    echo "tools/install_test_packages.sh: apt-get could not install ${missing[*]}" >&2
exit 0
