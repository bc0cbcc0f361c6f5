#!/bin/sh
# systemd-check.sh - the installed package under a real systemd, on a
# machine whose PID 1 is not systemd (a container, a CI VM).
#
# Boots /lib/systemd/systemd as PID 1 of a new PID and mount namespace,
# on an overlay of / (every write, tmpfiles included, lands in a scratch
# upper dir; the host's files are untouched) with a private /dev/shm, and
# checks outboxd.service from the installed .deb:
#   Type=notify start (active only after READY=1, STATUS= shown), a
#   producer in another hardened unit with the group `outbox` opens the
#   ring and one without it is refused, /metrics and /health, reload
#   (and a refused broken file), the watchdog (SIGSTOP -> SIGABRT ->
#   restart), a clean stop.
# Needs root and the packages installed (`make deb`, dpkg -i). Not part
# of `make test`: it boots an init system. Exit 0 when every check passed.
set -u
R=$(mktemp -d /tmp/obx-systemd-XXXXXX)
mkdir -p "$R/upper/etc/systemd/system" "$R/work" "$R/root"
fails=0
ok() { echo "ok:   $*"; }
bad() { echo "FAIL: $*"; fails=$((fails + 1)); }

cat > "$R/upper/etc/systemd/system/obxcheck.target" <<'EOF'
[Unit]
Description=outbox systemd check
Requires=basic.target
After=basic.target
EOF
cat > "$R/boot" <<EOF
#!/bin/sh
set -e
mount -t overlay overlay -o lowerdir=/,upperdir=$R/upper,workdir=$R/work $R/root
mount -t proc proc $R/root/proc
mount --rbind /sys $R/root/sys
mount --rbind /dev $R/root/dev
mount -t tmpfs -o mode=1777 tmpfs $R/root/dev/shm
mount -t tmpfs tmpfs $R/root/run
mount -t tmpfs tmpfs $R/root/tmp
exec chroot $R/root /usr/bin/env -i container=obxcheck \
	/lib/systemd/systemd --system --unit=obxcheck.target
EOF
chmod +x "$R/boot"
unshare --pid --fork --mount --propagation private "$R/boot" \
	>"$R/boot.log" 2>&1 &
boot=$!
pid1=""
for _ in $(seq 50); do
	pid1=$(pgrep -P "$boot" -f 'systemd --system' || true)
	[ -n "$pid1" ] && break
	sleep 0.2
done
[ -n "$pid1" ] || { echo "systemd did not boot"; cat "$R/boot.log"; exit 1; }
ns() { nsenter -t "$pid1" -m -p -r -w "$@"; }
for _ in $(seq 50); do
	ns systemctl is-system-running >/dev/null 2>&1 && break
	sleep 0.2
done
ns systemctl log-target journal
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
ns sed -i "s/^# metrics_listen = .*/metrics_listen = 127.0.0.1:$port/" \
	/etc/outbox/outbox.ini

ns systemctl start outboxd && ok "systemctl start (Type=notify: READY=1 received)" ||
	bad "systemctl start"
st=$(ns systemctl show outboxd -p StatusText --value)
case "$st" in running:*) ok "STATUS=$st" ;; *) bad "status text '$st'" ;; esac
ls=$(ns stat -c '%A %U:%G' /dev/shm/outbox)
[ "$ls" = "-rw-rw---- outbox:outbox" ] && ok "ring $ls" || bad "ring $ls"
ns systemd-run --wait -q -p User=nobody -p SupplementaryGroups=outbox \
	-p NoNewPrivileges=yes -p ProtectSystem=strict -p PrivateTmp=yes \
	/usr/bin/outbox emit '{"from":"another unit"}' &&
	ok "producer unit in group outbox emits" || bad "producer unit"
ns systemd-run --wait -q -p User=nobody /usr/bin/outbox emit '{"x":1}' \
	2>/dev/null && bad "a unit outside the group opened the ring" ||
	ok "a unit outside the group is refused"
sleep 1
ns curl -sf "127.0.0.1:$port/metrics" |
	grep -q '^outbox_sink_events_delivered_total{sink="default"} 1$' &&
	ok "/metrics: the event was delivered" || bad "/metrics"
[ "$(ns curl -s "127.0.0.1:$port/health")" = "ok" ] && ok "/health ok" ||
	bad "/health"
ns systemctl reload outboxd && ok "systemctl reload" || bad "reload"
ns cp -p /etc/outbox/outbox.ini /tmp/ini
ns sh -c 'echo "bogus = 1" >> /etc/outbox/outbox.ini'
ns systemctl reload outboxd 2>/dev/null && bad "a broken file reloaded" ||
	ok "a broken file: reload fails, broker keeps running"
ns cp -p /tmp/ini /etc/outbox/outbox.ini
[ "$(ns systemctl show outboxd -p SubState --value)" = running ] ||
	bad "not running after the refused reload"
ns mkdir -p /etc/systemd/system/outboxd.service.d
ns sh -c 'printf "[Service]\nWatchdogSec=2s\n" > /etc/systemd/system/outboxd.service.d/wd.conf'
ns systemctl daemon-reload
ns systemctl restart outboxd
sleep 3
[ "$(ns systemctl show outboxd -p NRestarts --value)" = 0 ] &&
	ok "WatchdogSec=2s: fed for 3 s" || bad "watchdog fired while running"
ns kill -STOP "$(ns systemctl show outboxd -p MainPID --value)"
sleep 5
ns journalctl --no-pager -o cat -u outboxd | grep -q 'Watchdog timeout' &&
	[ "$(ns systemctl show outboxd -p NRestarts --value)" = 1 ] &&
	ok "SIGSTOPped broker: watchdog timeout, restarted" ||
	bad "watchdog did not restart the stopped broker"
ns systemctl stop outboxd
[ "$(ns systemctl show outboxd -p Result --value)" = success ] &&
	ok "systemctl stop: clean exit" || bad "stop"
ns journalctl --no-pager -o short-precise | grep -E 'outboxd|systemd\[1\].*outbox' |
	tail -20 > "$R/journal.txt"
ns systemctl poweroff >/dev/null 2>&1
wait "$boot" 2>/dev/null
echo "journal tail: $R/journal.txt"
cat "$R/journal.txt"
[ "$fails" -eq 0 ] && echo "systemd-check: all passed" ||
	echo "systemd-check: $fails failed"
[ "$fails" -eq 0 ]
