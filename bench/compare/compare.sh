#!/usr/bin/env bash
# Side-by-side comparison of the azyq gateway with reference designs of the
# same money path, all driven by the same load test on this machine:
#
#   noop      a fasthttp server that answers without work: the HTTP ceiling
#   postgres  SELECT … FOR UPDATE in one transaction, synchronous_commit on
#   redis     one Lua script per redemption, appendonly, appendfsync always
#   gateway   cmd/gatewayd on a fresh data directory
#
# Each design is started on loopback from a temporary directory on disk,
# loaded for COMPARE_DURATION in a closed loop, and torn down on exit
# whatever happens. Then the gateway is loaded in an open loop at half the
# rate it reached, for the latency target. Reports (JSON and HTML) are kept
# in COMPARE_OUT.
#
# Knobs (environment): COMPARE_DURATION (20s), COMPARE_WORKERS (64),
# COMPARE_VOUCHERS (50000), COMPARE_OUT (bench/compare/out), COMPARE_ONLY
# (space-separated subset of "noop postgres redis gateway open").
set -euo pipefail

cd "$(dirname "$0")/../.."
DURATION=${COMPARE_DURATION:-20s}
WORKERS=${COMPARE_WORKERS:-64}
VOUCHERS=${COMPARE_VOUCHERS:-50000}
OUT=${COMPARE_OUT:-bench/compare/out}
ONLY=${COMPARE_ONLY:-noop postgres redis gateway open}
# Ports: a block of eleven for the servers, one each for PostgreSQL and
# Redis, the first ones found free from the defaults up, since other
# gateways may be running on this machine.
port_free() { ! ss -Hltn "sport = :$1" | grep -q .; }
block_free() {
	local p
	for p in $(seq "$1" $(($1 + 10))); do port_free "$p" || return 1; done
}
BASE_PORT=${COMPARE_BASE_PORT:-28180}
until block_free "$BASE_PORT"; do BASE_PORT=$((BASE_PORT + 20)); done
PG_PORT=${COMPARE_PG_PORT:-55432}
until port_free "$PG_PORT"; do PG_PORT=$((PG_PORT + 1)); done
REDIS_PORT=${COMPARE_REDIS_PORT:-56379}
until port_free "$REDIS_PORT"; do REDIS_PORT=$((REDIS_PORT + 1)); done
ADMIN=compare-admin-token
WALLET=compare-wallet-token

want() { [[ " $ONLY " == *" $1 "* ]]; }
log() { printf '== %s\n' "$*" >&2; }

# Everything lives in one temporary directory on the same disk as the
# gateway's default data directory (not tmpfs: fsync must cost what it costs).
TMP=$(mktemp -d /var/tmp/azyq-compare.XXXXXX)
chmod 755 "$TMP"
PIDS=()
PGBIN=""
cleanup() {
	local rc=$?
	for p in "${PIDS[@]}"; do
		kill "$p" 2>/dev/null || true
	done
	for p in "${PIDS[@]}"; do
		wait "$p" 2>/dev/null || true
	done
	if [[ -n "$PGBIN" && -d "$TMP/pg" ]]; then
		runuser -u postgres -- "$PGBIN/pg_ctl" -D "$TMP/pg" -m fast -w stop >/dev/null 2>&1 || true
	fi
	rm -rf "$TMP"
	exit $rc
}
trap cleanup EXIT INT TERM

# 1. PostgreSQL and Redis from Debian's packages, installed if missing.
need_pkgs=()
if want postgres && ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then need_pkgs+=(postgresql); fi
if want redis && ! command -v redis-server >/dev/null; then need_pkgs+=(redis-server); fi
if ((${#need_pkgs[@]})); then
	log "installing ${need_pkgs[*]}"
	apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_pkgs[@]}" >/dev/null
fi

# 2. Build once.
log "building"
mkdir -p "$TMP/bin" "$OUT"
go build -o "$TMP/bin/" ./cmd/loadtest ./bench/compare/refserver ./bench/compare/summary
if want gateway || want open; then
	go build -o "$TMP/bin/" ./cmd/gatewayd
fi

wait_http() { # url: wait until anything answers, at most 30 s
	for _ in $(seq 300); do
		curl -s -o /dev/null "$1" && return 0
		sleep 0.1
	done
	echo "no answer from $1" >&2
	return 1
}

if want postgres; then
	PGBIN=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)
	log "starting PostgreSQL from $PGBIN on 127.0.0.1:$PG_PORT"
	mkdir -p "$TMP/pg" "$TMP/pgsock"
	chown postgres "$TMP/pg" "$TMP/pgsock"
	runuser -u postgres -- "$PGBIN/initdb" -D "$TMP/pg" -A trust -U postgres >/dev/null
	runuser -u postgres -- "$PGBIN/pg_ctl" -D "$TMP/pg" -l "$TMP/pg/../pgsock/pg.log" -w start -o \
		"-p $PG_PORT -k $TMP/pgsock -c listen_addresses=127.0.0.1 -c synchronous_commit=on \
		 -c fsync=on -c max_connections=200 -c shared_buffers=512MB -c max_wal_size=4GB" >/dev/null
	"$TMP/bin/refserver" -kind pg -listen 127.0.0.1:$((BASE_PORT + 1)) \
		-pg "postgres://postgres@127.0.0.1:$PG_PORT/postgres" -admin-token $ADMIN -wallet-token $WALLET \
		2>"$TMP/ref-pg.log" &
	PIDS+=($!)
fi
if want redis; then
	log "starting Redis on 127.0.0.1:$REDIS_PORT (appendonly, appendfsync always)"
	mkdir -p "$TMP/redis"
	redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --appendonly yes --appendfsync always \
		--save "" --dir "$TMP/redis" --daemonize no >"$TMP/redis.log" 2>&1 &
	PIDS+=($!)
	for _ in $(seq 100); do redis-cli -p "$REDIS_PORT" ping >/dev/null 2>&1 && break; sleep 0.1; done
	"$TMP/bin/refserver" -kind redis -listen 127.0.0.1:$((BASE_PORT + 2)) \
		-redis "127.0.0.1:$REDIS_PORT" -admin-token $ADMIN -wallet-token $WALLET 2>"$TMP/ref-redis.log" &
	PIDS+=($!)
fi
if want noop; then
	"$TMP/bin/refserver" -kind noop -listen 127.0.0.1:$((BASE_PORT + 3)) 2>"$TMP/ref-noop.log" &
	PIDS+=($!)
fi
if want gateway || want open; then
	log "starting gatewayd on 127.0.0.1:$BASE_PORT"
	# The reference servers have no per-terminal rate limit, and 160 tills
	# at full speed exceed gatewayd's default of 100 requests/s each: cheap
	# 429 answers would inflate its figure, so the limit is off here.
	"$TMP/bin/gatewayd" --data "$TMP/gateway" --listen 127.0.0.1:$BASE_PORT \
		--ops-listen 127.0.0.1:$((BASE_PORT + 10)) --admin-token $ADMIN --wallet-token $WALLET \
		--settlement-token compare-settlement-token --terminal-rate 0 >"$TMP/gatewayd.log" 2>&1 &
	PIDS+=($!)
	for _ in $(seq 300); do
		[[ "$(curl -s -o /dev/null -w '%{http_code}' http://127.0.0.1:$((BASE_PORT + 10))/readyz)" == 200 ]] && break
		sleep 0.1
	done
fi

# cpu_snapshot prints "pid ticks name" for every process: user plus system
# time in clock ticks, to tell afterwards who used the CPU during a run.
cpu_snapshot() {
	for f in /proc/[0-9]*/stat; do
		read -r line <"$f" 2>/dev/null || continue
		local pid=${line%% *} name=${line#*(}
		name=${name%%)*}
		local rest=${line##*) }
		set -- $rest
		echo "$pid $((${12} + ${13})) ${name// /_}"
	done 2>/dev/null
}

# cpu_top before after: the processes that used the most CPU between two
# snapshots, in seconds (ticks of 10 ms), so that a figure taken while
# something else ran says so.
cpu_top() {
	awk 'NR == FNR { t[$1] = $2; next } { d = $2 - t[$1]; if (d > 20) printf "%7.1fs %s\n", d / 100, $3 }' \
		"$1" "$2" | sort -rn | head -6
}

# 3. The same closed-loop load on each, one after the other.
loadtest() { # name addr [extra flags]
	local name=$1 addr=$2
	shift 2
	wait_http "http://$addr/v1/vouchers/x"
	log "load test: $name at $addr ($(uptime | sed 's/.*load/load/'))"
	cpu_snapshot >"$TMP/cpu-before"
	# The load test bounds itself; timeout is the backstop for a set-up
	# that hangs on a server that stopped answering.
	timeout --signal=INT --kill-after=30 600 "$TMP/bin/loadtest" --addr "$addr" --admin-token $ADMIN --wallet-token $WALLET \
		--label "$name" --mix redemptions --workers "$WORKERS" --vouchers "$VOUCHERS" \
		--qr-per-voucher 4 --duration "$DURATION" --quiet \
		--json "$OUT/$name.json" --html "$OUT/$name.html" "$@" >"$OUT/$name.txt" 2>"$TMP/lt-$name.log" \
		|| log "$name: load test exited $? (see $OUT/$name.txt)"
	cpu_snapshot >"$TMP/cpu-after"
	{
		echo
		echo "CPU used during the run (set-up, timed phase and book check), by process:"
		cpu_top "$TMP/cpu-before" "$TMP/cpu-after"
	} >>"$OUT/$name.txt"
	tail -n +2 "$OUT/$name.txt" | head -4 >&2
}

reports=()
if want noop; then loadtest noop 127.0.0.1:$((BASE_PORT + 3)) && reports+=(noop=$OUT/noop.json); fi
if want postgres; then loadtest postgres 127.0.0.1:$((BASE_PORT + 1)) && reports+=(postgres=$OUT/postgres.json); fi
if want redis; then loadtest redis 127.0.0.1:$((BASE_PORT + 2)) && reports+=(redis=$OUT/redis.json); fi
if want gateway; then loadtest gateway 127.0.0.1:$BASE_PORT && reports+=(gateway=$OUT/gateway.json); fi

# 4. The gateway in an open loop at half the rate it reached.
if want open && [[ -f "$OUT/gateway.json" ]]; then
	rate=$("$TMP/bin/summary" --half-rate "$OUT/gateway.json")
	loadtest open 127.0.0.1:$BASE_PORT --mode open --rate "$rate" --workers 512
	reports+=(open=$OUT/open.json)
fi

echo
echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), $(free -g | awk '/Mem:/{print $2}') GiB; $(uptime | sed 's/.*load/load/')"
"$TMP/bin/summary" "${reports[@]}" | tee "$OUT/summary.txt"
