# registry_auth.sh - lora push / pull to a docker-registry behind htpasswd
# (bcrypt) Basic authentication, with credentials from a Docker config.json:
# the right password works, a wrong or missing one is one clean line naming
# the registry, and the password is never printed.
. tests/lib.sh
. tests/registry_lib.sh
TOOLS=${LORA_TOOLS:-$PWD/build/tools}
mktiny() { ASAN_OPTIONS=detect_leaks=0 "$TOOLS/mktiny" "$@"; }

if ! reg_have || ! command -v htpasswd >/dev/null 2>&1; then
	echo "SKIP registry_auth: docker-registry or htpasswd (apache2-utils) is not installed"
	t_case registry_auth_absent_skipped
	t_end
	exit 0
fi
PW='s3cret-Pw0rd'
htpasswd -Bbn alice "$PW" >"$T/htpasswd" 2>/dev/null
reg_start "$T/htpasswd" || { t_case registry_start; t_fail "docker-registry did not start"; t_end; exit 1; }

mktiny model "$T/base" --hidden 32 --inter 64 >/dev/null
mktiny adapter "$T/ad" --base "$T/base" --r 2 >/dev/null
"$LORA" keygen --name alice@example.com >/dev/null
run "$LORA" import "$T/ad" --name sql:v1
D=${OUT#* }
dockercfg() {  # DIR USER PASSWORD [KEY]
	mkdir -p "$1"
	printf '{"auths": {"%s": {"auth": "%s"}}}\n' "${4:-$REG}" "$(printf '%s:%s' "$2" "$3" | base64 -w0)" >"$1/config.json"
}

t_case anonymous_is_refused_cleanly
run "$LORA" push sql:v1 "$REG/team/sql:v1"
expect_rc 1
expect_err "registry $REG: authentication required"

t_case right_password_pushes_and_pulls
dockercfg "$T/dc-good" alice "$PW"
DOCKER_CONFIG="$T/dc-good" run "$LORA" push sql:v1 "$REG/team/sql:v1"
expect_rc 0
"$LORA" --store "$T/s2" trust add alice@example.com "$LORA_HOME/keys/id_ed25519.pub" >/dev/null
DOCKER_CONFIG="$T/dc-good" run "$LORA" --store "$T/s2" pull "$REG/team/sql:v1"
expect_rc 0
expect_eq "$OUT" "sql:v1 $D"
run "$LORA" --store "$T/s2" verify sql:v1
expect_rc 0

t_case wrong_password_one_clean_line
dockercfg "$T/dc-bad" alice "not-the-password"
DOCKER_CONFIG="$T/dc-bad" run "$LORA" --store "$T/s3" pull "$REG/team/sql:v1"
expect_rc 1
expect_err "registry $REG: the credentials of 'alice' were refused"
case "$OUT$ERR" in *not-the-password*) t_fail "the password was printed";; esac
DOCKER_CONFIG="$T/dc-bad" run "$LORA" push sql:v1 "$REG/team/sql:v2"
expect_rc 1
expect_err "registry $REG"
case "$OUT$ERR" in *not-the-password*|*"$PW"*) t_fail "a password was printed";; esac

t_case home_docker_config_and_url_keys
# no $DOCKER_CONFIG: ~/.docker/config.json, with the key written as a URL
dockercfg "$HOME/.docker" alice "$PW" "https://$REG/v1/"
run "$LORA" --store "$T/s4" pull "$REG/team/sql:v1" --allow-untrusted
expect_rc 0
expect_eq "$OUT" "sql:v1 $D"

t_case malformed_docker_config
mkdir -p "$T/dc-broken"; echo '{"auths": ' >"$T/dc-broken/config.json"
DOCKER_CONFIG="$T/dc-broken" run "$LORA" push sql:v1 "$REG/team/sql:v1"
expect_rc 1
expect_err "config.json"

t_end
