#!/usr/bin/env bash
# demo.sh: the `make demo` story (issue 6 §2). Builds umbra, starts a server
# on free loopback ports with a temporary data dir (authentication on), a
# simulated fleet enrolled with the operator token, uploads a generated
# firmware image, rolls it out in batches (first 10 devices, then 25%) with
# live progress, and prints a summary. Every process it starts is stopped on
# exit, including Ctrl-C; the exit status is 0 when the rollout succeeded.
#
# Environment (all optional):
#   DEMO_DEVICES=1000       fleet size
#   DEMO_INSTALL_TIME=2s    simulated install time (±20% jitter)
#   DEMO_FAIL_RATE=0.01     fraction of devices whose update fails
#   DEMO_FAIL_MODE=install  how they fail: download, verify, install or silent
#   DEMO_CONNECT_RATE=500   device connections per second
#   DEMO_MQTT_PORT=0        MQTT port (0: a free one)
#   DEMO_HTTP_PORT=0        HTTP API port (0: a free one)
#   DEMO_TIMEOUT=90         seconds the fleet may take to connect, and the rollout to finish
#   DEMO_KEEP=1             keep the temporary directory (logs, data dir) and print where
#   DEMO_TMP=DIR            work in DIR (created if needed, never removed); its
#                           file "pids" lists every process the script started
#   DEMO_BIN=PATH           use this umbra binary instead of building one
set -euo pipefail

devices=${DEMO_DEVICES:-1000}
install_time=${DEMO_INSTALL_TIME:-2s}
fail_rate=${DEMO_FAIL_RATE:-0.01}
fail_mode=${DEMO_FAIL_MODE:-install}
connect_rate=${DEMO_CONNECT_RATE:-500}
mqtt_port=${DEMO_MQTT_PORT:-0}
http_port=${DEMO_HTTP_PORT:-0}
timeout=${DEMO_TIMEOUT:-90}
version=1.1.0

die() { echo "demo: $*" >&2; exit 1; }
for v in devices connect_rate mqtt_port http_port timeout; do
	[[ ${!v} =~ ^[0-9]+$ ]] || die "DEMO_${v^^}=${!v}: want a non-negative integer"
done
((devices >= 1)) || die "DEMO_DEVICES=$devices: want at least 1"

# Settings from the caller's environment (UMBRA_TOKEN, UMBRA_API, …) must
# not leak into the demo's commands: it talks to its own server only.
while read -r v; do unset "$v"; done < <(compgen -e | grep '^UMBRA_' || true)

cd "$(dirname "${BASH_SOURCE[0]}")/.."

if [[ -n ${DEMO_TMP:-} ]]; then
	tmp=$DEMO_TMP own_tmp=0
	mkdir -p "$tmp"
else
	tmp=$(mktemp -d "${TMPDIR:-/tmp}/umbra-demo.XXXXXX") own_tmp=1
fi
data=$tmp/data
: >"$tmp/pids"

# started PID: record a process the demo started ($tmp/pids, in start
# order; a file, so that subshells can add to it too).
started() { echo "$1" >>"$tmp/pids"; }

# umbra ARGS: run the demo's umbra as a background job and wait for it. A
# trapped signal interrupts `wait` at once, whereas a foreground child that
# handles SIGINT itself, as umbra does, makes bash drop the Ctrl-C. For the
# same reason umbra is never called in $(…) or a pipeline (a subshell):
# its output goes to a file.
umbra() {
	"$bin" "$@" &
	started "$!"
	wait "$!"
}

# nap SECONDS: sleep, interruptible by a trapped signal at once (see umbra).
nap() {
	sleep "$1" &
	wait "$!" || true
}

# alive PID: the process has not exited (bash reaps its children, so an
# exited child no longer answers kill -0).
alive() { kill -0 "$1" 2>/dev/null; }

# stop PID SECONDS: SIGTERM, wait up to SECONDS, then SIGKILL; reaps it.
stop() {
	local pid=$1 i
	if alive "$pid"; then
		kill -TERM "$pid" 2>/dev/null
		for ((i = 0; i < $2 * 10; i++)); do
			alive "$pid" || break
			sleep 0.1
		done
		if alive "$pid"; then
			echo "demo: process $pid did not stop within $2s; killing it" >&2
			kill -KILL "$pid" 2>/dev/null
		fi
	fi
	wait "$pid" 2>/dev/null
}

cleanup() {
	local rc=$? pid
	set +e
	trap '' INT TERM # a second Ctrl-C must not cut the cleanup short
	# Every background job too: a signal may come between starting one and
	# recording it.
	jobs -p >>"$tmp/pids"
	for pid in $(awk '!seen[$0]++' "$tmp/pids" | tac); do # last started first: the server goes last
		stop "$pid" 15
	done
	if ((own_tmp)) && [[ ${DEMO_KEEP:-} != 1 ]]; then
		rm -rf "$tmp"
	else
		echo "demo: logs and data kept in $tmp"
	fi
	exit "$rc"
}
trap cleanup EXIT
trap 'echo; echo "demo: interrupted" >&2; exit 130' INT
trap 'exit 143' TERM

now() { echo "${EPOCHREALTIME/,/.}"; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1fs", b - a }'; }
step() { echo "==> $*"; }
indent() { sed "s/^/$(printf "%${1:-4}s")/"; }
t0=$(now)

# 1. Build.
if [[ -n ${DEMO_BIN:-} ]]; then
	bin=$DEMO_BIN
else
	step "building umbra"
	"${GO:-go}" build -o "$tmp/umbra" ./cmd/umbra
	bin=$tmp/umbra
	echo "    built in $(since "$t0")"
fi

# 2. Serve with authentication on; the log tells the bound addresses.
step "starting umbra serve (data in $data)"
"$bin" serve --data-dir "$data" --log-format json --log-level info \
	--mqtt-addr "127.0.0.1:$mqtt_port" --ws-addr "" --http-addr "127.0.0.1:$http_port" \
	2>"$tmp/serve.log" &
serve_pid=$!
started "$serve_pid"
line=
for ((i = 0; i < 300; i++)); do
	line=$(grep -m1 '"msg":"umbra serving"' "$tmp/serve.log" || true)
	[[ -n $line ]] && break
	alive "$serve_pid" || break
	nap 0.1
done
if [[ -z $line ]]; then
	tail -n 20 "$tmp/serve.log" >&2
	die "umbra serve did not start"
fi
field() { sed -n "s/.*\"$1\":\"\([^\"]*\)\".*/\1/p" <<<"$line"; }
mqtt=$(field mqtt) http=$(field http)
[[ -n $mqtt && -n $http ]] || die "cannot read the listen addresses from: $line"
echo "    MQTT tcp://$mqtt, HTTP http://$http, operator token $data/admin.token"
api=(--api "http://$http" --data-dir "$data")

# 3. The fleet: every device is enrolled with the operator token and pins
# the fleet's firmware signing key, passed as its PEM value (sim would take
# a path of exactly 32 characters for a raw key).
umbra firmware pubkey "${api[@]}" >"$tmp/fleet.pub"
step "starting $devices simulated devices (install ${install_time}, fail rate $fail_rate, mode $fail_mode)"
"$bin" sim --mqtt "tcp://$mqtt" "${api[@]}" --devices "$devices" --connect-rate "$connect_rate" \
	--install-time "$install_time" --fail-rate "$fail_rate" --fail-mode "$fail_mode" \
	--public-key "$(<"$tmp/fleet.pub")" >"$tmp/sim.log" 2>"$tmp/sim.err" &
sim_pid=$!
started "$sim_pid"
deadline=$((SECONDS + timeout))
connected=0
while :; do
	umbra device list -o json "${api[@]}" >"$tmp/devices.json" || true
	connected=$(grep -Eo '"connected": ?true' "$tmp/devices.json" | wc -l || true)
	[[ -t 1 ]] && printf '\r    %d/%d connected' "$connected" "$devices"
	((connected >= devices)) && break
	if ! alive "$sim_pid"; then
		tail -n 20 "$tmp/sim.err" >&2
		die "umbra sim exited"
	fi
	((SECONDS < deadline)) || die "only $connected of $devices devices connected within ${timeout}s (see $tmp/sim.err)"
	nap 0.3
done
[[ -t 1 ]] && echo
echo "    $connected/$devices devices connected after $(since "$t0")"

# 4. A firmware image.
step "uploading a 256 KiB test image as $version"
head -c 262144 /dev/urandom >"$tmp/firmware-$version.bin"
umbra firmware upload "$tmp/firmware-$version.bin" --version "$version" --notes "make demo" "${api[@]}" >"$tmp/upload.txt"
indent <"$tmp/upload.txt"

# 5. The rollout: a canary of 10, then 25% of the fleet per batch.
umbra rollout create --firmware "$version" --all "${api[@]}" \
	--first-batch 10 --batch-percent 25 --success-threshold 90% \
	--failure-threshold 10% --min-sample 10 --on-failure pause \
	--retries 1 --retry-backoff 2s --device-timeout 30s >"$tmp/rollout.id"
id=$(<"$tmp/rollout.id")
[[ -n $id ]] || die "rollout create printed no rollout ID"
t1=$(now)
step "rollout $id created; watching it"
# The watcher, a background job, starts with SIGINT ignored until umbra
# installs its handler: a Ctrl-C in its first milliseconds misses it, and
# the cleanup stops it (SIGTERM) like every other process.
"$bin" rollout status "$id" --watch "${api[@]}" &
watch_pid=$!
started "$watch_pid"
deadline=$((SECONDS + timeout))
while alive "$watch_pid" && ((SECONDS < deadline)); do
	nap 0.2
done
if alive "$watch_pid"; then
	stop "$watch_pid" 5
	die "rollout $id did not finish within ${timeout}s"
fi
watch_rc=0
wait "$watch_pid" || watch_rc=$?
rollout_time=$(since "$t1")

# 6. Summary, from the rollout's status JSON: the rollout's own fields
# come first (its "state" before any device's), counts are {"succeeded":N,…}.
umbra rollout status "$id" -o json "${api[@]}" >"$tmp/status.json"
status=$(<"$tmp/status.json")
first() { grep -o "\"$1\":[^,}]*" <<<"$status" | head -n 1 | cut -d: -f2 | tr -d '"' || true; }
counts=$(grep -o '"counts":{[^}]*}' <<<"$status" | head -n 1 || true)
count() { grep -o "\"$1\":[0-9]*" <<<"$counts" | cut -d: -f2 || true; }
state=$(first state) targets=$(first targets)
succeeded=$(count succeeded) already=$(count already-installed) failed=$(count failed) timed_out=$(count timed_out)
succeeded=${succeeded:-0} already=${already:-0} failed=${failed:-0} timed_out=${timed_out:-0}
echo
step "summary"
echo "    rollout:         $id ${state:-?}, $version on ${targets:-?} targets"
echo "    devices updated: $((succeeded + already)) of $devices ($succeeded succeeded, $already already ran $version)"
echo "    failures:        $((failed + timed_out)) ($failed failed, $timed_out timed out)"
if ((failed + timed_out > 0)); then
	umbra rollout devices "$id" --state failed,timed_out "${api[@]}" >"$tmp/failures.txt"
	indent 6 <"$tmp/failures.txt"
fi
echo "    elapsed:         $(since "$t0") in all, rollout $rollout_time"
if ((watch_rc != 0)); then
	echo "    last events:"
	umbra rollout events "$id" "${api[@]}" >"$tmp/events.txt"
	tail -n 5 "$tmp/events.txt" | indent 6
	die "rollout $id did not succeed (${state:-unknown state})"
fi
echo "    rollout $id succeeded"
