# tests/registry_lib.sh - start Debian's docker-registry (the distribution
# project's registry) for a test, on 127.0.0.1 with its storage in $T, and
# stop it when the test exits.  Source after tests/lib.sh.
#
#   reg_start [HTPASSWD_FILE]   sets REG (127.0.0.1:PORT), REG_DATA, REG_LOG
#   reg_blob_file DIGEST        the registry's file holding a blob
#   reg_count_uploads           POSTs to blobs/uploads/ so far (from the access log)

REG_PID=""
reg_stop() {
	if [ -n "$REG_PID" ]; then
		kill "$REG_PID" 2>/dev/null
		wait "$REG_PID" 2>/dev/null
		REG_PID=""
	fi
}
trap 'reg_stop; rm -rf "$T"' EXIT

reg_have() { command -v docker-registry >/dev/null 2>&1; }

reg_start() {
	local auth="" try port
	REG_DATA="$T/registry-data"
	REG_LOG="$T/registry.log"
	if [ -n "${1:-}" ]; then
		auth="auth:
  htpasswd:
    realm: lora-test
    path: $1"
	fi
	for try in 1 2 3 4 5 6 7 8; do
		port=$((20000 + (RANDOM * 32768 + RANDOM) % 40000))
		cat >"$T/registry.yml" <<YML
version: 0.1
log:
  level: info
  accesslog:
    disabled: false
storage:
  filesystem:
    rootdirectory: $REG_DATA
  delete:
    enabled: true
http:
  addr: 127.0.0.1:$port
  secret: lora-test-secret
$auth
YML
		: >"$REG_LOG"
		docker-registry serve "$T/registry.yml" >>"$REG_LOG" 2>&1 &
		REG_PID=$!
		local i=0
		while [ $i -lt 100 ]; do
			grep -q "listening on" "$REG_LOG" && break
			kill -0 "$REG_PID" 2>/dev/null || break
			sleep 0.05
			i=$((i + 1))
		done
		if grep -q "listening on" "$REG_LOG" && kill -0 "$REG_PID" 2>/dev/null; then
			REG="127.0.0.1:$port"
			return 0
		fi
		reg_stop
	done
	echo "could not start docker-registry: $(tail -3 "$REG_LOG")" >&2
	return 1
}

reg_blob_file() {
	local hex=${1#sha256:}
	echo "$REG_DATA/docker/registry/v2/blobs/sha256/$(printf %s "$hex" | cut -c1-2)/$hex/data"
}

reg_count_uploads() { grep -c '"POST /v2/[^"]*/blobs/uploads/' "$REG_LOG"; }

# A listing of a store with every file's hash: equal before and after means unchanged.
store_snapshot() {
	(cd "$1" && find . -path ./tmp -prune -o -type f ! -name '.lock-*' -print0 | sort -z |
		xargs -0 -r sha256sum; find . -mindepth 1 -path './tmp/*' -print | sort)
}
