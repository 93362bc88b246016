#!/usr/bin/env bash
# Make sure Debian's chromium is installed (used by the crowd-server browser test).
# Prints the browser path on stdout. Never downloads Playwright's own browsers.
# Exit 0 when chromium is available afterwards, 1 otherwise (with a one-line reason on stderr).
set -u
for p in /usr/bin/chromium /usr/bin/chromium-browser; do
  if [ -x "$p" ]; then echo "$p"; exit 0; fi
done
if [ "$(id -u)" != "0" ]; then
  echo "ensure_chromium: chromium is missing and we are not root; run: sudo apt-get install -y chromium" >&2
  exit 1
fi
if ! command -v apt-get >/dev/null 2>&1; then
  echo "ensure_chromium: chromium is missing and apt-get is not available" >&2
  exit 1
fi
export DEBIAN_FRONTEND=noninteractive
# Serialise concurrent installs (several test workers may call this at once).
exec 9>/tmp/labelprop-ensure-chromium.lock
flock 9
if [ -x /usr/bin/chromium ]; then echo /usr/bin/chromium; exit 0; fi
{
  apt-get install -y -q --no-install-recommends chromium </dev/null ||
  { apt-get update -q </dev/null && apt-get install -y -q --no-install-recommends chromium </dev/null; }
} >/tmp/labelprop-ensure-chromium.log 2>&1
if [ -x /usr/bin/chromium ]; then echo /usr/bin/chromium; exit 0; fi
echo "ensure_chromium: apt-get install chromium failed; see /tmp/labelprop-ensure-chromium.log" >&2
exit 1
