#!/usr/bin/env bash
# Installs the system packages edgeloop's demo and tests use, when missing:
#   mosquitto (MQTT broker), postgresql (the production database path is tested on a real one),
#   GStreamer's RTSP server with python3-gi (a real RTSP camera for the source tests),
#   chromium (the console's browser tests drive Debian's Chromium through Playwright),
#   prometheus (a real Prometheus scrapes a test server; promtool unit-tests the alert rules).
# As root it uses apt-get; otherwise it says what to install and carries on.
set -euo pipefail
need=()
command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ] || need+=(mosquitto)
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || need+=(postgresql)
# a real RTSP camera for the source tests: GStreamer's RTSP server under the system Python
/usr/bin/python3 -c "import gi; gi.require_version('GstRtspServer', '1.0'); gi.require_version('Gst', '1.0')" \
  >/dev/null 2>&1 || need+=(python3 python3-gi gir1.2-gst-rtsp-server-1.0 gstreamer1.0-plugins-base gstreamer1.0-plugins-good)
[ -x /usr/bin/chromium ] || need+=(chromium)
command -v promtool >/dev/null 2>&1 || need+=(prometheus)
[ ${#need[@]} -eq 0 ] && exit 0
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "installing system packages: ${need[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
else
  echo "missing system packages: ${need[*]} (install them with your package manager; tests that need them will fail)" >&2
fi
