#!/usr/bin/env bash
# mmdebstrap: makes the Debian base from pinned .debs (envkit/image/debian.py, tests/integration/test_repro_image.py).
# Already on a Debian host: dpkg-deb, apt, and /dev/shm (the scratch chroot goes there when it has 2 GiB free).
set -euo pipefail
command -v mmdebstrap >/dev/null 2>&1 && exit 0
apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends mmdebstrap >/dev/null
