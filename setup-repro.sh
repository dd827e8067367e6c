#!/bin/sh
# Lines for .ci/setup-host (branch repro): what the reproducible-image tests need on the CI host.
# mmdebstrap makes the Debian base from pinned .debs (tests/integration/test_repro_image.py, envkit/image/debian.py).
set -e
apt-get install -y --no-install-recommends mmdebstrap
# Already there on a Debian host: dpkg-deb (dpkg), apt, and /dev/shm (tmpfs; the chroot is made there when it has 2 GiB).
