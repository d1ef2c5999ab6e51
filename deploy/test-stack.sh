#!/usr/bin/env bash
# The compose stack under a real Docker engine (docs/deployment.md, "The stack test").
#
# As root on Debian: installs what is missing (docker.io, mmdebstrap, iptables), starts a private dockerd whose
# data root, exec root, pid file and socket all live in a temp dir, gets Compose v2 (the CLI plugins of Debian
# trixie's docker-compose and docker-buildx, fetched with a private apt configuration), provides the base images
# the Dockerfile and compose.yaml name (pulled from the registry when one answers, otherwise built from Debian
# packages with mmdebstrap and imported under the same names), builds the project image unchanged, brings the
# stack up with the project's compose.yaml and runs deploy/stack_checks.py, which checks it as a user would and
# prints a table. Whatever happens, the trap stops dockerd and restores iptables, ip_forward and the network
# interfaces as they were, and removes the temp dir.
#
# Environment: SYNC_STACK_CACHE (default /var/cache/sync-stack-test) keeps base-image tarballs and the Compose
# plugins between runs to save time; a run never depends on it (delete it and the run rebuilds everything).
# SYNC_STACK_NO_CACHE=1 ignores it for this run.
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
PYTHON_IMAGE="python:3.11-slim-bookworm"
REDIS_IMAGE="redis:7-bookworm"
MIRROR="http://deb.debian.org/debian"
CACHE="${SYNC_STACK_CACHE:-/var/cache/sync-stack-test}"
STARTED=$(date +%s)

log() { printf '[stack-test %4ds] %s\n' "$(($(date +%s) - STARTED))" "$*" >&2; }
die() { log "FAILED: $*"; exit 1; }

[ "$(id -u)" = 0 ] || die "run as root (it starts a private dockerd)"
command -v apt-get >/dev/null || die "needs a Debian system (apt-get)"

WORK="$(mktemp -d /tmp/sync-stack.XXXXXX)"
chmod 755 "$WORK"
export DOCKER_HOST="unix://$WORK/docker.sock"
export DOCKER_CONFIG="$WORK/docker-config"
# Compose names containers, networks and volumes after the project; a private name keeps them apart.
export COMPOSE_PROJECT_NAME="syncstack"
DOCKERD_PID=""

# --- host state, saved before anything changes it, restored by the trap ------------------------------------
IPT_VARIANTS=()

# Called after install_missing: on a host without iptables the variants exist only once it is installed, and the
# host's state is then their empty tables (looked up earlier, none was saved and the engine's rules stayed).
save_host_state() {
	local variant
	IPT_VARIANTS=()
	for variant in legacy nft; do
		command -v "iptables-$variant-save" >/dev/null 2>&1 && IPT_VARIANTS+=("$variant")
	done
	for variant in "${IPT_VARIANTS[@]}"; do
		"iptables-$variant-save" >"$WORK/iptables-$variant.rules" 2>/dev/null || true
	done
	sysctl -n net.ipv4.ip_forward >"$WORK/ip_forward"
	ip -o link show | awk -F': ' '{print $2}' | cut -d@ -f1 | sort >"$WORK/links.before"
}

restore_iptables() {
	local variant table saved
	for variant in "${IPT_VARIANTS[@]}"; do
		saved="$WORK/iptables-$variant.rules"
		[ -f "$saved" ] || continue
		# Tables the engine created (absent from the saved dump): empty them and drop their chains; for nft
		# the table itself goes. Tables in the dump: iptables-restore puts them back exactly as they were.
		for table in $("iptables-$variant-save" 2>/dev/null | sed -n 's/^\*//p'); do
			grep -qx "\*$table" "$saved" && continue
			if [ "$variant" = nft ] && command -v nft >/dev/null; then
				nft delete table ip "$table" 2>/dev/null || true
			else
				"iptables-$variant" -t "$table" -F 2>/dev/null || true
				"iptables-$variant" -t "$table" -X 2>/dev/null || true
			fi
		done
		if grep -q '^\*' "$saved"; then
			"iptables-$variant-restore" <"$saved" || log "warning: iptables-$variant-restore failed"
		fi
	done
}

cleanup() {
	local status=$? link pid
	set +e
	trap - EXIT INT TERM
	log "cleaning up (exit status $status)"
	if [ -n "$DOCKERD_PID" ] && kill -0 "$DOCKERD_PID" 2>/dev/null; then
		# Containers first (they hold mounts and veths), then the engine: TERM, bounded wait, KILL.
		timeout 60 "$DOCKER" ps -aq 2>/dev/null | xargs -r timeout 60 "$DOCKER" rm -f >/dev/null 2>&1
		kill -TERM "$DOCKERD_PID"
		for _ in $(seq 1 30); do kill -0 "$DOCKERD_PID" 2>/dev/null || break; sleep 1; done
		kill -KILL "$DOCKERD_PID" 2>/dev/null
	fi
	# The engine's own containerd and shims, if any outlived it (matched by our exec root, never by name).
	for pid in $(pgrep -f -- "$WORK/" 2>/dev/null); do
		[ "$pid" != $$ ] && kill -KILL "$pid" 2>/dev/null
	done
	sleep 1
	# Mounts under the temp dir (overlay layers, netns files, shm), deepest first.
	awk -v w="$WORK/" 'index($2, w) == 1 {print $2}' /proc/self/mounts | sort -r | while read -r mnt; do
		umount -l "$mnt" 2>/dev/null
	done
	# Bridges the engine created (docker0, br-<network id>); their veths went with the containers. Other
	# interfaces that appeared meanwhile are someone else's and stay.
	ip -o link show | awk -F': ' '{print $2}' | cut -d@ -f1 | sort >"$WORK/links.after"
	for link in $(comm -13 "$WORK/links.before" "$WORK/links.after" | grep -E '^(docker0|br-[0-9a-f]{12})$'); do
		ip link delete "$link" 2>/dev/null
	done
	restore_iptables
	[ -f "$WORK/ip_forward" ] && sysctl -qw "net.ipv4.ip_forward=$(cat "$WORK/ip_forward")"
	rm -rf "$WORK"
	log "done in $(($(date +%s) - STARTED)) s"
	exit "$status"
}

# --- prerequisites -------------------------------------------------------------------------------------------
install_missing() {
	local missing=() dep
	for dep in dockerd:docker.io mmdebstrap:mmdebstrap iptables:iptables curl:curl python3:python3; do
		command -v "${dep%%:*}" >/dev/null 2>&1 || missing+=("${dep##*:}")
	done
	if [ ${#missing[@]} -gt 0 ]; then
		log "installing ${missing[*]}"
		apt-get update -qq
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
	fi
	# Debian's client matches Debian's engine; any other docker client negotiates the API version down.
	if [ -x /usr/bin/docker ]; then DOCKER=/usr/bin/docker; else DOCKER="$(command -v docker)"; fi
}

# --- the private engine --------------------------------------------------------------------------------------
start_dockerd() {
	mkdir -p "$WORK/data" "$WORK/exec" "$DOCKER_CONFIG"
	echo '{}' >"$WORK/daemon.json"
	log "starting dockerd (data root $WORK/data)"
	dockerd --config-file "$WORK/daemon.json" --data-root "$WORK/data" --exec-root "$WORK/exec" \
		--pidfile "$WORK/dockerd.pid" --host "$DOCKER_HOST" --storage-driver overlay2 --shutdown-timeout 5 \
		>"$WORK/dockerd.log" 2>&1 &
	DOCKERD_PID=$!
	for _ in $(seq 1 60); do
		"$DOCKER" version >/dev/null 2>&1 && return 0
		kill -0 "$DOCKERD_PID" 2>/dev/null || break
		sleep 1
	done
	tail -20 "$WORK/dockerd.log" >&2
	die "dockerd did not start"
}

# --- Compose v2 from Debian trixie, with a private apt configuration -----------------------------------------
get_compose() {
	local plugins="$DOCKER_CONFIG/cli-plugins" cached="$CACHE/cli-plugins" apt="$WORK/apt" deb
	mkdir -p "$plugins"
	if [ -z "${SYNC_STACK_NO_CACHE:-}" ] && [ -x "$cached/docker-compose" ] && [ -x "$cached/docker-buildx" ]; then
		cp "$cached"/docker-compose "$cached"/docker-buildx "$plugins/"
	else
		log "fetching docker-compose and docker-buildx from Debian trixie (private apt configuration)"
		mkdir -p "$apt/lists/partial" "$apt/cache/archives/partial" "$apt/debs" "$apt/x" "$apt/parts" "$apt/prefs"
		: >"$apt/status"
		echo "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] $MIRROR trixie main" \
			>"$apt/sources.list"
		local opts=(-o "Dir::Etc::SourceList=$apt/sources.list" -o "Dir::Etc::SourceParts=$apt/parts"
			-o "Dir::Etc::Preferences=$apt/prefs/none" -o "Dir::Etc::PreferencesParts=$apt/prefs"
			-o "Dir::State::Lists=$apt/lists" -o "Dir::State::status=$apt/status"
			-o "Dir::Cache=$apt/cache" -o "APT::Get::List-Cleanup=0" -o "Debug::NoLocking=1")
		apt-get "${opts[@]}" -qq update
		(cd "$apt/debs" && chmod 777 . && apt-get "${opts[@]}" -qq download docker-compose docker-buildx)
		for deb in "$apt"/debs/*.deb; do dpkg-deb -x "$deb" "$apt/x"; done
		cp "$apt/x/usr/libexec/docker/cli-plugins/docker-compose" "$apt/x/usr/libexec/docker/cli-plugins/docker-buildx" \
			"$plugins/"
		if mkdir -p "$cached" 2>/dev/null; then cp "$plugins"/docker-compose "$plugins"/docker-buildx "$cached/"; fi
	fi
	"$DOCKER" compose version >&2 || die "docker compose does not run"
}

# --- base images ---------------------------------------------------------------------------------------------
registry_answers() {
	timeout 40 "$DOCKER" pull -q "$REDIS_IMAGE" >/dev/null 2>&1
}

# Every base rootfs trusts the CAs added on this host (the package index's TLS may be intercepted).
CA_HOOKS=(
	--customize-hook='if ls /usr/local/share/ca-certificates/*.crt >/dev/null 2>&1; then cp /usr/local/share/ca-certificates/*.crt "$1/usr/local/share/ca-certificates/"; fi'
	--customize-hook='chroot "$1" update-ca-certificates >/dev/null'
)
SLIM_OPTS=(
	--dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-exclude=/usr/share/man/*'
	--dpkgopt='path-exclude=/usr/share/locale/*' --dpkgopt='path-include=/usr/share/doc/*/copyright'
	--customize-hook='rm -rf "$1"/var/lib/apt/lists/* "$1"/var/cache/apt/*.bin'
)

# python:3.11-slim-bookworm: Debian's python3.11 laid out as the official image has it, python, python3 and
# pip in /usr/local/bin (a venv rooted at /usr/local, so pip installs there and not into Debian's packages).
build_python_rootfs() {
	mmdebstrap --quiet --variant=minbase --include=ca-certificates,python3,python3-venv,netbase \
		"${SLIM_OPTS[@]}" "${CA_HOOKS[@]}" \
		--customize-hook='chroot "$1" python3 -m venv /usr/local' \
		--customize-hook='chroot "$1" /usr/local/bin/python -m pip --version >/dev/null' \
		bookworm "$1" "$MIRROR"
}

# redis:7-bookworm: Debian's redis-server (7.0), run as user redis in /data like the official image.
build_redis_rootfs() {
	mmdebstrap --quiet --variant=minbase --include=redis-server "${SLIM_OPTS[@]}" \
		--customize-hook='mkdir -p "$1/data" && chroot "$1" chown redis:redis /data' \
		bookworm "$1" "$MIRROR"
}

# The rootfs tarball of a base image: from the cache, or built (and cached when the cache is writable).
base_tarball() {
	local name=$1 builder=$2 cached="$CACHE/base-${1%%:*}.tar" built="$WORK/base-${1%%:*}.tar"
	if [ -z "${SYNC_STACK_NO_CACHE:-}" ] && [ -s "$cached" ]; then
		log "using cached rootfs $cached"
		ln -s "$cached" "$built"
		return
	fi
	log "building $name from Debian bookworm packages (mmdebstrap)"
	"$builder" "$built"
	if mkdir -p "$CACHE" 2>/dev/null && cp "$built" "$cached.tmp.$$"; then mv "$cached.tmp.$$" "$cached"; fi
}

import_base() {
	local name=$1 tarball="$WORK/base-${1%%:*}.tar" changes=() change
	shift
	for change in "$@"; do changes+=(--change "$change"); done
	"$DOCKER" import "${changes[@]}" "$tarball" "$name" >/dev/null
	rm -f "$tarball"
}

provide_base_images() {
	if registry_answers; then
		log "a registry answers: using the official images"
		"$DOCKER" pull -q "$PYTHON_IMAGE" >/dev/null
		return
	fi
	log "no registry reachable: building the base images from Debian packages"
	# Both rootfs at once: mmdebstrap mostly waits on downloads and dpkg.
	base_tarball "$REDIS_IMAGE" build_redis_rootfs >"$WORK/mmdebstrap-redis.log" 2>&1 &
	local redis_job=$!
	base_tarball "$PYTHON_IMAGE" build_python_rootfs
	wait "$redis_job" || { cat "$WORK/mmdebstrap-redis.log" >&2; die "building the redis rootfs failed"; }
	cat "$WORK/mmdebstrap-redis.log" >&2
	local path="PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
	import_base "$PYTHON_IMAGE" "ENV $path" "ENV LANG=C.UTF-8" 'CMD ["python3"]'
	import_base "$REDIS_IMAGE" "ENV $path" "WORKDIR /data" "USER redis" "EXPOSE 6379" 'CMD ["redis-server"]'
}

main() {
	install_missing
	save_host_state
	trap cleanup EXIT
	trap 'exit 130' INT TERM
	start_dockerd
	get_compose
	provide_base_images
	[ -n "${SYNC_STACK_INFRA_ONLY:-}" ] && { log "infrastructure ready"; return 0; }
	python3 "$ROOT/deploy/stack_checks.py" --docker "$DOCKER" --root "$ROOT" --work "$WORK"
}

main "$@"
