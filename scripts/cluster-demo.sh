#!/usr/bin/env bash
# cluster-demo.sh: the `make cluster-demo` story (issue 15, docs/cluster.md).
# Starts three nats-servers (one JetStream cluster, R3 buckets) and three
# `umbra serve --nats` nodes on free loopback ports, in a temporary
# directory under scratch/; connects a simulated fleet spread over the
# three nodes; shows that a shadow written through one node is read through
# another; runs a rollout to every device, created through one node and
# planned by the planner lease's holder; prints `umbra cluster status`.
# Every process it starts is stopped on exit, including Ctrl-C; the exit
# status is 0 when every device connected, the rollout succeeded on every
# device, the cluster is healthy, and, last, the devices of node 3, killed
# -9, reconnected to the next node (umbra sim fails over through its list
# of addresses). The nodes run with
# --insecure-anonymous (loopback only): no tokens to hand around.
#
# Environment (all optional):
#   CLUSTER_DEMO_DEVICES=300   fleet size, spread evenly over the nodes
#   CLUSTER_DEMO_TIMEOUT=60    seconds each step may take
#   CLUSTER_DEMO_KEEP=1        keep the temporary directory (logs, data) and print where
#   CLUSTER_DEMO_TMP=DIR       work in DIR (created if needed, never removed); its
#                              file "pids" lists every process the script started
#   CLUSTER_DEMO_BIN=PATH      use this umbra binary instead of building one
#   UMBRA_NATS_SERVER=PATH     the nats-server binary (default .tools/bin/nats-server,
#                              then nats-server on PATH; `make nats-deps` builds it)
set -euo pipefail

devices=${CLUSTER_DEMO_DEVICES:-300}
timeout=${CLUSTER_DEMO_TIMEOUT:-60}
nodes=3

die() { echo "cluster-demo: $*" >&2; exit 1; }
for v in devices timeout; do
	[[ ${!v} =~ ^[0-9]+$ ]] || die "CLUSTER_DEMO_${v^^}=${!v}: want a non-negative integer"
done
((devices >= nodes)) || die "CLUSTER_DEMO_DEVICES=$devices: want at least $nodes"

cd "$(dirname "${BASH_SOURCE[0]}")/.."

nats_bin=${UMBRA_NATS_SERVER:-}
if [[ -z $nats_bin ]]; then
	if [[ -x .tools/bin/nats-server ]]; then
		nats_bin=.tools/bin/nats-server
	else
		nats_bin=$(command -v nats-server || true)
	fi
fi
[[ -n $nats_bin && -x $nats_bin ]] || die "nats-server not found: run \`make nats-deps\` (or set UMBRA_NATS_SERVER)"
nats_bin=$(realpath "$nats_bin")

# Settings from the caller's environment (UMBRA_TOKEN, UMBRA_API, …) must
# not leak into the demo's commands: it talks to its own nodes only.
while read -r v; do unset "$v"; done < <(compgen -e | grep '^UMBRA_' || true)

if [[ -n ${CLUSTER_DEMO_TMP:-} ]]; then
	tmp=$CLUSTER_DEMO_TMP own_tmp=0
	mkdir -p "$tmp"
else
	mkdir -p scratch
	tmp=$(mktemp -d "$PWD/scratch/cluster-demo.XXXXXX") own_tmp=1
fi
: >"$tmp/pids"

# started PID: record a process the demo started ($tmp/pids, in start order).
started() { echo "$1" >>"$tmp/pids"; }

# umbra ARGS: run umbra as a background job and wait for it, so that a
# trapped signal interrupts at once (see scripts/demo.sh); its output goes
# where the caller redirects it, never through $(…).
umbra() {
	"$bin" "$@" &
	started "$!"
	wait "$!"
}

nap() {
	sleep "$1" &
	wait "$!" || true
}

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
			echo "cluster-demo: process $pid did not stop within $2s; killing it" >&2
			kill -KILL "$pid" 2>/dev/null
		fi
	fi
	wait "$pid" 2>/dev/null || true
}

cleanup() {
	local rc=$? pid
	set +e
	trap '' INT TERM
	jobs -p >>"$tmp/pids"
	for pid in $(awk '!seen[$0]++' "$tmp/pids" | tac); do # last started first: the NATS servers go last
		stop "$pid" 15
	done
	if ((own_tmp)) && [[ ${CLUSTER_DEMO_KEEP:-} != 1 ]]; then
		rm -rf "$tmp"
	else
		echo "cluster-demo: logs and data kept in $tmp"
	fi
	exit "$rc"
}
trap cleanup EXIT
trap 'echo; echo "cluster-demo: interrupted" >&2; exit 130' INT
trap 'exit 143' TERM

now() { echo "${EPOCHREALTIME/,/.}"; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1fs", b - a }'; }
step() { echo "==> $*"; }
indent() { sed "s/^/    /"; }
t0=$(now)

if [[ -n ${CLUSTER_DEMO_BIN:-} ]]; then
	bin=$CLUSTER_DEMO_BIN
else
	step "building umbra"
	"${GO:-go}" build -o "$tmp/umbra" ./cmd/umbra
	bin=$tmp/umbra
fi

# free_port: a loopback port nothing listens on now, random in 10000-32767,
# below Linux's ephemeral ports (outgoing connections cannot take it
# meanwhile); the NATS routes need their ports before the servers start.
taken=" "
free_port() {
	local p i
	for ((i = 0; i < 100; i++)); do
		p=$((10000 + RANDOM % 22768))
		[[ $taken == *" $p "* ]] && continue
		if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
			taken+="$p "
			echo "$p"
			return
		fi
	done
	die "no free loopback port found"
}

# 1. Three nats-servers, one JetStream cluster.
step "starting $nodes nats-servers ($("$nats_bin" --version)), one JetStream cluster"
declare -a client route
for ((i = 1; i <= nodes; i++)); do
	client[i]=$(free_port)
	route[i]=$(free_port)
done
urls=
for ((i = 1; i <= nodes; i++)); do
	routes=
	for ((j = 1; j <= nodes; j++)); do
		((j == i)) || routes+="nats-route://127.0.0.1:${route[j]}, "
	done
	mkdir -p "$tmp/nats$i"
	cat >"$tmp/nats$i.conf" <<EOF
server_name: nats-$i
listen: 127.0.0.1:${client[i]}
jetstream { store_dir: "$tmp/nats$i", sync_interval: always }
cluster { name: umbra-demo, listen: 127.0.0.1:${route[i]}, routes: [ ${routes%, } ] }
EOF
	"$nats_bin" -c "$tmp/nats$i.conf" 2>"$tmp/nats$i.log" &
	started "$!"
	urls+="nats://127.0.0.1:${client[i]},"
done
urls=${urls%,}
for ((i = 1; i <= nodes; i++)); do
	for ((k = 0; k < timeout * 10; k++)); do
		grep -q 'Server is ready' "$tmp/nats$i.log" && break
		grep -q '\[FTL\]' "$tmp/nats$i.log" && break
		nap 0.1
	done
	if ! grep -q 'Server is ready' "$tmp/nats$i.log"; then
		tail -n 5 "$tmp/nats$i.log" >&2
		die "nats-server $i did not start"
	fi
done
echo "    $urls"

# 2. Three Umbra nodes. The first may have to wait for the JetStream
# cluster to elect its leader: a node that cannot create its buckets yet
# exits, and is started again.
declare -a mqtt http node_pid
start_node() {
	local i=$1 line= pid try
	for ((try = 0; try < timeout; try++)); do
		"$bin" serve --data-dir "$tmp/node$i" --node-id "n$i" --nats "$urls" --nats-replicas 3 \
			--mqtt-addr 127.0.0.1:0 --ws-addr "" --http-addr 127.0.0.1:0 --insecure-anonymous \
			--log-format json --log-level info 2>"$tmp/node$i.log" &
		pid=$!
		started "$pid"
		for ((k = 0; k < 300; k++)); do
			line=$(grep -m1 '"msg":"umbra serving"' "$tmp/node$i.log" || true)
			[[ -n $line ]] && break
			alive "$pid" || break
			nap 0.1
		done
		[[ -n $line ]] && break
		stop "$pid" 5
		nap 1
	done
	if [[ -z $line ]]; then
		tail -n 20 "$tmp/node$i.log" >&2
		die "node n$i did not start"
	fi
	node_pid[i]=$pid
	mqtt[i]=$(sed -n 's/.*"mqtt":"\([^"]*\)".*/\1/p' <<<"$line")
	http[i]=$(sed -n 's/.*"http":"\([^"]*\)".*/\1/p' <<<"$line")
	echo "    n$i: MQTT tcp://${mqtt[i]}, HTTP http://${http[i]}"
}
step "starting $nodes umbra nodes (data in $tmp/node1…$nodes)"
for ((i = 1; i <= nodes; i++)); do
	start_node "$i"
done

# 3. The fleet: one simulator over the three nodes (device i on node
# i mod 3), failing over to the next node when its node goes away.
mqtt_list=
for ((i = 1; i <= nodes; i++)); do
	mqtt_list+="tcp://${mqtt[i]},"
done
mqtt_list=${mqtt_list%,}
step "connecting $devices simulated devices over the $nodes nodes ($((devices / nodes)) or more per node)"
"$bin" sim --mqtt "$mqtt_list" --api "http://${http[1]}" --devices "$devices" --id-prefix "dev-" \
	--connect-rate 200 --stats-interval 1s >"$tmp/sim.log" 2>"$tmp/sim.err" &
started "$!"

# The registry's connection counts are renewed every heartbeat (5 s).
deadline=$((SECONDS + timeout))
while :; do
	umbra cluster status -o json --api "http://${http[1]}" >"$tmp/status.json" 2>"$tmp/status.err" || true
	connected=$(grep -o '"connections":[0-9]*' "$tmp/status.json" | awk -F: '{ s += $2 } END { print s + 0 }')
	listed=$(grep -o '"id":"n[0-9]*"' "$tmp/status.json" | wc -l)
	((listed >= nodes && connected >= devices)) && break
	((SECONDS < deadline)) || die "after ${timeout}s: $listed nodes listed, $connected of $devices devices connected (see $tmp/sim.err)"
	nap 0.5
done
echo "    $connected/$devices devices connected over $listed nodes after $(since "$t0")"

# 4. One fleet: a shadow written through node 1 is read through node 3.
width=${#devices}
((width < 4)) && width=4
dev="dev-$(printf '%0*d' "$width" "$nodes")" # device i (0-based) is on node i mod 3 + 1
step "desired state of $dev (connected to n$nodes) written through n1, read through n$nodes"
umbra shadow update "$dev" --desired '{"demo":"hello from n1"}' --mqtt "tcp://${mqtt[1]}" -o json >"$tmp/update.json"
umbra shadow get "$dev" --mqtt "tcp://${mqtt[nodes]}" -o json >"$tmp/get.json"
grep -q '"hello from n1"' "$tmp/get.json" || die "node n$nodes does not see the update made on n1: $(<"$tmp/get.json")"
echo "    n$nodes reads: $(grep -o '"desired":{[^}]*}' "$tmp/get.json" | head -n 1)"

# 5. A rollout to every device: the image uploaded through n1, the rollout
# created through n3; whichever node holds the planner lease plans it and
# the other nodes forward their calls to it.
version=1.1.0
step "rollout of $version to the $devices devices: uploaded through n1, created through n$nodes"
head -c 65536 /dev/urandom >"$tmp/firmware-$version.bin"
umbra firmware upload "$tmp/firmware-$version.bin" --version "$version" --api "http://${http[1]}" >"$tmp/upload.txt"
: >"$tmp/targets.txt"
for ((k = 1; k <= devices; k++)); do
	printf 'dev-%0*d\n' "$width" "$k" >>"$tmp/targets.txt"
done
umbra rollout create --firmware "$version" --devices-file "$tmp/targets.txt" --batch-percent 50% \
	--api "http://${http[nodes]}" >"$tmp/rollout.id" 2>"$tmp/create.txt"
indent <"$tmp/create.txt"
id=$(<"$tmp/rollout.id")
[[ -n $id ]] || die "rollout create printed no rollout ID"
t1=$(now)
deadline=$((SECONDS + timeout))
while :; do
	umbra rollout status "$id" -o json --api "http://${http[2]}" >"$tmp/rollout.json" 2>"$tmp/rollout.err" || true
	state=$(grep -o '"state":"[a-z_]*"' "$tmp/rollout.json" | head -n 1 | cut -d'"' -f4 || true)
	[[ $state == succeeded ]] && break
	[[ $state == failed || $state == aborted ]] && die "rollout $id $state: $(<"$tmp/rollout.json")"
	((SECONDS < deadline)) || die "rollout $id not finished within ${timeout}s: ${state:-?} $(<"$tmp/rollout.err")"
	nap 0.5
done
succeeded=$(grep -o '"counts":{[^}]*}' "$tmp/rollout.json" | head -n 1 | grep -o '"succeeded":[0-9]*' | cut -d: -f2 || true)
umbra cluster status -o json --api "http://${http[1]}" >"$tmp/status.json"
holder=$(grep -o '"planner":"[^"]*"' "$tmp/status.json" | cut -d'"' -f4 || true)
echo "    rollout $id succeeded on ${succeeded:-0} of $devices devices in $(since "$t1"), planned by ${holder:-?}"
((${succeeded:-0} == devices)) || die "rollout $id succeeded on ${succeeded:-0} of $devices devices"

# 6. The cluster's status.
step "umbra cluster status"
umbra cluster status --api "http://${http[2]}" >"$tmp/status.txt"
indent <"$tmp/status.txt"
grep -q '^mode: cluster, healthy' "$tmp/status.txt" || die "the cluster is not healthy"

# 7. Failover: kill -9 node 3; its devices reconnect to node 1, the next
# address of their list (the simulator's stats line, every second, says
# how many devices each address holds).
step "kill -9 n$nodes: its devices reconnect to n1"
t2=$(now)
kill -KILL "${node_pid[nodes]}"
wait "${node_pid[nodes]}" 2>/dev/null || true # reaped quietly (no "Killed" line)
deadline=$((SECONDS + timeout))
while :; do
	line=$(grep '"kind":"stats"' "$tmp/sim.log" | tail -n 1)
	all=$(sed -n 's/^{"kind":"stats","time":"[^"]*","devices":[0-9]*,"connected":\([0-9]*\).*/\1/p' <<<"$line")
	gone=$(grep -o "\"url\":\"tcp://${mqtt[nodes]}\",\"connected\":[0-9]*" <<<"$line" | awk -F: '{ print $NF }')
	[[ ${all:-0} -eq $devices && ${gone:-1} -eq 0 ]] && break
	((SECONDS < deadline)) || die "after ${timeout}s: $all of $devices devices connected, $gone still counted on n$nodes (see $tmp/sim.err)"
	nap 0.5
done
reconnects=$(grep -o '"reconnects":[0-9]*' <<<"$line" | awk -F: '{ print $2 }')
echo "    $devices/$devices devices connected again, $reconnects reconnected, in $(since "$t2")"
echo "    done in $(since "$t0")"
