#!/usr/bin/env bash
# The real proof for the systemd unit: boot a throw-away systemd (PID 1 of an nspawn
# container on this machine's own /usr, tmpfs root, private network), install radmin in
# it the way docs/install.md says (scripts/install-systemd, offline from a wheelhouse),
# and check start (READY=1), ping, reload (same MainPID), the watchdog, stop, and that
# the journal holds radmind's structlog lines. Adapted from shared/recipes/systemd-nspawn.sh.
#
# Needs root. Installs systemd-container if absent. Exit 0 = every check passed.
set -uo pipefail
src=$(cd "$(dirname "$0")/../.." && pwd)
W=${RADMIN_NSPAWN_DIR:-/tmp/radmin-nspawn}
M=radmintest$$
BOOT_TIMEOUT=60
fail=0
ok()  { echo "ok   - $*"; }
nok() { echo "FAIL - $*"; fail=1; }
T0=$(date +%s.%N)

[ "$(id -u)" = 0 ] || { echo "needs root"; exit 77; }
# The test installs nothing: scripts/test installs systemd-container when it can.
command -v systemd-nspawn >/dev/null \
  || { echo "systemd-nspawn is missing (scripts/test installs systemd-container as root)"; exit 77; }

rm -rf "$W"; mkdir -p "$W/units" "$W/wheels"
python=${PYTHON:-$src/.venv/bin/python}
# A wheelhouse, so the install inside the (network-less) container is the real one.
"$python" -m pip wheel --quiet --disable-pip-version-check -w "$W/wheels" "$src" >/dev/null 2>&1 \
  || { echo "pip wheel failed"; exit 2; }
pybase=$("$python" -c 'import sys; print(sys.base_prefix)')
binds=(--bind-ro="$src:/src" --bind-ro="$W/wheels:/wheels")
case "$pybase" in /usr|/usr/*) ;; *) binds+=(--bind-ro="$pybase:$pybase") ;; esac
realpy=$("$python" -c 'import sys, os; print(os.path.realpath(sys.executable))')

ln -sf /dev/null "$W/units/systemd-machine-id-commit.service"
{ od -An -N16 -tx1 /dev/urandom | tr -d ' \n'; echo; } > "$W/machine-id"

CG=""
if [ -f /sys/fs/cgroup/cgroup.controllers ]; then CGS=/sys/fs/cgroup
else CGS="/sys/fs/cgroup/unified /sys/fs/cgroup/systemd"; fi
for h in $CGS; do [ -d "$h" ] && mkdir -p "$h/$M" 2>/dev/null && CG="$CG $h/$M"; done

bash -c '
  echo $$ > '"$W"'/nspawn.pid
  for c in '"$CG"'; do echo $$ > "$c/cgroup.procs" 2>/dev/null; done
  exec systemd-nspawn --quiet --boot --volatile=yes --directory=/ \
    --register=no --keep-unit --private-network --console=read-only \
    --machine='"$M"' \
    --bind-ro='"$W"'/machine-id:/etc/machine-id \
    --bind='"$W"'/units:/etc/systemd/system \
    '"${binds[*]}"'
' > "$W/nspawn.log" 2>&1 < /dev/null &
for _ in $(seq 50); do [ -s "$W/nspawn.pid" ] && break; sleep 0.1; done
NSPID=$(cat "$W/nspawn.pid")

cleanup() {
  if kill -0 "$NSPID" 2>/dev/null; then
    kill -TERM "$NSPID"
    for _ in $(seq 100); do kill -0 "$NSPID" 2>/dev/null || break; sleep 0.1; done
    kill -0 "$NSPID" 2>/dev/null && kill -KILL "$NSPID"
  fi
  wait 2>/dev/null
  for c in $CG; do find "$c" -depth -type d -exec rmdir {} + 2>/dev/null; done
  rm -rf "/run/systemd/nspawn/propagate/$M" 2>/dev/null
}
trap cleanup EXIT

LEADER=""; st=""
for _ in $(seq $((BOOT_TIMEOUT*10))); do
  LEADER=$(ps --ppid "$NSPID" -o pid=,comm= 2>/dev/null | awk '$2=="systemd"{print $1}')
  st=$([ -n "$LEADER" ] && nsenter -t "$LEADER" -a systemctl is-system-running 2>/dev/null)
  case "$st" in running|degraded) break;; esac
  kill -0 "$NSPID" 2>/dev/null || { echo "nspawn died:"; cat "$W/nspawn.log"; exit 3; }
  sleep 0.1
done
IN() { nsenter -t "$LEADER" -a "$@"; }
T1=$(date +%s.%N)
echo "# booted ($st) in $(awk "BEGIN{printf \"%.1f\", $T1-$T0}")s"

# -- install the way docs/install.md says -------------------------------------------
IN env PYTHON="$realpy" /src/scripts/install-systemd --wheels /wheels > "$W/install.log" 2>&1 \
  && ok "scripts/install-systemd installed radmin" || { nok "install"; cat "$W/install.log"; }
IN test -s /etc/radmin/server.key && IN test -s /etc/radmin/radmind.yaml \
  && ok "radmind init created /etc/radmin/server.key and radmind.yaml" || nok "no /etc/radmin files"
[ "$(IN stat -c %a /etc/radmin/server.key)" = 600 ] && ok "server.key is 0600" || nok "server.key mode"
IN systemd-analyze verify /etc/systemd/system/radmind.service >/dev/null 2>&1 \
  && ok "systemd-analyze verify accepts the installed unit" || nok "verify"
# a second install keeps the key
fp1=$(IN /opt/radmin/bin/radmind fingerprint -c /etc/radmin/radmind.yaml)
IN env PYTHON="$realpy" /src/scripts/install-systemd --wheels /wheels >/dev/null 2>&1
[ "$(IN /opt/radmin/bin/radmind fingerprint -c /etc/radmin/radmind.yaml)" = "$fp1" ] \
  && ok "re-running the installer keeps the identity" || nok "identity replaced"

# authorize a local client, as the install guide tells the admin to: its block appended
# to radmind.yaml, whose last section is the clients: that init wrote
IN /opt/radmin/bin/radmin-cli keygen --home /root/cli >/dev/null
IN cp /root/cli/identity.crt /etc/radmin/clients/ops.crt
IN sh -c 'cat >> /etc/radmin/radmind.yaml' <<'YAML'
  ops:
    cert: clients/ops.crt
    allow:
      exec: ["*"]
YAML
IN /opt/radmin/bin/radmind check -c /etc/radmin/radmind.yaml >/dev/null && ok "radmind check: ok" || nok "check"
# a short watchdog so the test can see it at work
IN mkdir -p /etc/systemd/system/radmind.service.d
printf '[Service]\nWatchdogSec=3\n' > "$W/units/radmind.service.d/test.conf" 2>/dev/null \
  || IN sh -c 'printf "[Service]\nWatchdogSec=3\n" > /etc/systemd/system/radmind.service.d/test.conf'
IN systemctl daemon-reload

# -- start, ping, reload, watchdog, stop ---------------------------------------------
prop() { IN systemctl show -P "$1" radmind.service; }
IN systemctl enable --now radmind.service >/dev/null 2>&1 && ok "systemctl enable --now returned (READY=1)" || nok "start"
[ "$(prop ActiveState)/$(prop SubState)" = active/running ] && ok "active/running" || nok "state $(prop ActiveState)"
case "$(prop StatusText)" in *listening*) ok "STATUS= $(prop StatusText)";; *) nok "StatusText '$(prop StatusText)'";; esac
PID1=$(prop MainPID)
out=$(IN /opt/radmin/bin/radmin-cli ping --home /root/cli 127.0.0.1 2>&1)
case "$out" in *'known as "ops"'*) ok "radmin-cli ping inside the container: $(echo "$out" | tail -1)";; *) nok "ping: $out";; esac
out=$(IN /opt/radmin/bin/radmin-cli exec --home /root/cli 127.0.0.1 'echo hello from $USER' 2>&1)
[ "$out" = "hello from root" ] && ok "radmin-cli exec runs a command as root" || nok "exec: $out"

IN sed -i 's/^  level: info/  level: debug/' /etc/radmin/radmind.yaml
IN systemctl reload radmind.service && ok "systemctl reload" || nok "reload"
sleep 0.5
[ "$(prop MainPID)" = "$PID1" ] && ok "same MainPID after reload" || nok "MainPID changed"
IN journalctl -u radmind --no-pager -o cat | grep -q '"event": "reloaded"' && ok "journal: reloaded" || nok "no reloaded event"
# a bad config: systemctl reload fails (ExecReload runs radmind check), the daemon keeps serving
IN cp /etc/radmin/radmind.yaml /root/good.yaml
IN sh -c 'echo "bogus_key: 1" >> /etc/radmin/radmind.yaml'
IN systemctl reload radmind.service >/dev/null 2>&1 && nok "reload of a bad config succeeded" || ok "reload of a bad config fails"
IN /opt/radmin/bin/radmin-cli ping --home /root/cli 127.0.0.1 >/dev/null 2>&1 && ok "still serving after a rejected reload" || nok "not serving"
IN cp /root/good.yaml /etc/radmin/radmind.yaml

sleep 7   # > 2 x WatchdogSec
[ "$(prop ActiveState)" = active ] && [ "$(prop MainPID)" = "$PID1" ] \
  && ok "WATCHDOG=1 keeps a healthy daemon alive (WatchdogSec=3, waited 7 s)" || nok "killed by the watchdog"

IN systemctl status radmind.service --no-pager > "$W/status.txt" 2>&1
grep -q '"event": "' "$W/status.txt" && ok "systemctl status shows the structlog lines" || nok "status output"
IN systemctl stop radmind.service && ok "systemctl stop" || nok "stop"
[ "$(prop ActiveState)" = inactive ] && ok "inactive (not failed) after stop" || nok "after stop: $(prop ActiveState)/$(prop Result)"
IN journalctl -u radmind --no-pager -o cat | grep -q '"event": "stopped"' && ok "journal: stopped cleanly" || nok "no stopped event"

echo "# --- journalctl -u radmind (last lines) ---"
IN journalctl -u radmind --no-pager -o cat | tail -8 | sed 's/^/# /'
cleanup; trap - EXIT
echo "# total $(awk "BEGIN{printf \"%.1f\", $(date +%s.%N)-$T0}")s"
exit $fail
