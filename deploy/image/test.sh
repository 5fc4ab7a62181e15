#!/usr/bin/env bash
# `make image-test`: builds the image (deploy/image) and runs it as a cluster would, against
# the local Postgres and the Stripe/Cryptolens sandbox on the host: `keysync migrate`, then
# `keysync serve` as the image's user 65532, with a read-only root filesystem and no
# capabilities; checks /readyz, a webhook that makes a license key, and a clean stop.
# Needs root, podman, runc, curl, jq and the PostgreSQL client tools (README: Container
# image). Podman's configuration and storage, the database and the sandbox are the test's
# own and are removed on exit, pass or fail. Any failed step exits non-zero.
set -euo pipefail
cd "$(dirname "$0")/../.."

export PGHOST=${PGHOST:-127.0.0.1} PGPORT=${PGPORT:-5432} PGUSER=${PGUSER:-postgres}
wait_s=${IMAGE_TEST_WAIT:-60} # the longest each wait may take
uid=65532                     # the image's user (deploy/image/Containerfile, deploy/Dockerfile)

verified=()
step() { printf '\n== %s\n' "$*"; }
ok() {
	printf '   ok: %s\n' "$*"
	verified+=("$*")
}
fail() {
	printf '\nimage-test: FAIL: %s\n' "$*" >&2
	exit 1
}

# until_ok WHAT COMMAND...: runs COMMAND until it succeeds, failing after $wait_s seconds.
until_ok() {
	local what=$1 end=$((SECONDS + wait_s))
	shift
	until "$@"; do
		[ "$SECONDS" -lt "$end" ] || fail "$what: not within ${wait_s}s"
		sleep 0.2
	done
}

# 0. What the test needs.
[ "$(id -u)" = 0 ] || fail "run as root: podman runs rootful here"
for tool in podman runc curl jq psql createdb dropdb go; do
	command -v "$tool" >/dev/null || fail "$tool not found (README: Container image)"
done
for bin in bin/keysync bin/keysync-sandbox; do
	[ -x "$bin" ] || fail "$bin missing: run make build (make image-test does)"
done

# Everything the test makes, and the cleanup that removes it whatever happens.
tmp=$(mktemp -d /tmp/keysync-image-test.XXXXXX)
image=localhost/keysync-image-test:$$
container=keysync-image-test-$$
db=keysync_image_test_$$
sandbox_pid=
cleanup() {
	local rc=$?
	set +e
	if [ "$rc" != 0 ] && podman container exists "$container" 2>/dev/null; then
		echo "--- keysync's last log lines" >&2
		podman logs --tail 30 "$container" >&2
	fi
	podman rm --force --time 0 "$container" >/dev/null 2>&1
	podman rmi --force "$image" >/dev/null 2>&1
	if [ -n "$sandbox_pid" ]; then
		kill "$sandbox_pid" 2>/dev/null
		wait "$sandbox_pid" 2>/dev/null
	fi
	dropdb --if-exists --force "$db" || rc=1
	# Podman's storage driver may still hold mounts under its root; they go first.
	findmnt -rn -o TARGET | grep "^$tmp/" | sort -r | xargs -r umount
	rm -rf "$tmp" || rc=1
	if [ "$rc" = 0 ]; then
		echo "   cleaned up: container, image, podman storage, sandbox, database $db"
	fi
	exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# 1. Podman's configuration and storage live in the temporary directory: the machine's
# own configuration is neither read nor changed.
cat >"$tmp/containers.conf" <<EOF
[containers]
# Without this, rootful podman raises the container's open-files limit above what this
# machine lets runc set ("error setting rlimit type 7").
default_ulimits = []

[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
tmp_dir = "$tmp/libpod"
EOF
cat >"$tmp/storage.conf" <<EOF
[storage]
driver = "${IMAGE_TEST_STORAGE_DRIVER:-overlay}"
graphroot = "$tmp/storage"
runroot = "$tmp/run"
EOF
export CONTAINERS_CONF=$tmp/containers.conf CONTAINERS_STORAGE_CONF=$tmp/storage.conf

step "build the image without a registry (deploy/image/build.sh)"
deploy/image/build.sh "$image"
config=$(podman image inspect --format '{{.Config.User}} {{json .Config.Entrypoint}} {{json .Config.Cmd}}' "$image")
[ "$config" = "$uid:$uid [\"/usr/local/bin/keysync\"] [\"serve\"]" ] || fail "image config: $config"
ok "image user $uid:$uid, entrypoint /usr/local/bin/keysync, command serve"

# The files of the image as a container sees them: exactly four, owned by root, only
# keysync executable: no shell, no libc, no package manager.
podman create --name "$container-files" "$image" >/dev/null
files=$(podman export "$container-files" | tar -tvf - | awk '$1 !~ /^d/ {print $1, $2, $6}' | sort)
podman rm "$container-files" >/dev/null
want=$'-rw-r--r-- 0/0 etc/group\n-rw-r--r-- 0/0 etc/passwd\n-rw-r--r-- 0/0 etc/ssl/certs/ca-certificates.crt\n-rwxr-xr-x 0/0 usr/local/bin/keysync'
[ "$files" = "$want" ] || fail "image files:"$'\n'"$files"$'\n'"want:"$'\n'"$want"
ok "image files: /etc/passwd, /etc/group, the CA bundle, keysync (root-owned; no shell)"

step "throwaway database $db on $PGHOST:$PGPORT"
createdb "$db"
database_url="postgres://$PGUSER@$PGHOST:$PGPORT/$db?sslmode=disable"

step "Stripe and Cryptolens sandbox on the host (bin/keysync-sandbox)"
bin/keysync-sandbox -stripe-addr 127.0.0.1:0 -cryptolens-addr 127.0.0.1:0 -control-addr 127.0.0.1:0 \
	-env-file "$tmp/sandbox.env" >"$tmp/sandbox.log" 2>&1 &
sandbox_pid=$!
# The sandbox prints its addresses once it serves, after writing the environment file.
sandbox_up() {
	kill -0 "$sandbox_pid" 2>/dev/null || fail "the sandbox exited"
	grep -q 'control API' "$tmp/sandbox.log"
}
until_ok "the sandbox" sandbox_up
control=$(awk '/control API/ {print $3}' "$tmp/sandbox.log")
envval() { sed -n "s/^$1=//p" "$tmp/sandbox.env"; }
product=$(envval CRYPTOLENS_PRODUCT_ID)
ok "sandbox serving; its environment (test credentials) goes to keysync as a file, never printed"

# Both containers run as deploy/kubernetes's securityContext runs keysync: the image's own
# user, a read-only root filesystem, no capabilities, no privilege escalation.
hardened=(--network host --read-only --cap-drop all --security-opt no-new-privileges)

step "keysync migrate in the image"
podman run --rm "${hardened[@]}" --env "DATABASE_URL=$database_url" "$image" migrate up | tee "$tmp/migrate.out"
grep -q '^schema: current$' "$tmp/migrate.out" || fail "migrate did not report the schema current"
tables=$(psql -d "$db" -Atc "SELECT count(*) FROM pg_tables WHERE tablename IN ('audit_log', 'stripe_events', 'river_job')")
[ "$tables" = 3 ] || fail "after migrate, $tables of audit_log, stripe_events, river_job exist"
ok "keysync migrate up ran in the image on a read-only root: schema current, tables made"

step "keysync serve in the image (the image's default command)"
# KEYSYNC_MIGRATE=false leaves the schema to the step above, as a Kubernetes migration Job
# would; the admin listener takes any free port on the shared host network. Versions of
# keysync without these settings ignore them.
podman run --detach --name "$container" "${hardened[@]}" \
	--env-file "$tmp/sandbox.env" \
	--env "DATABASE_URL=$database_url" \
	--env KEYSYNC_LISTEN=127.0.0.1:0 \
	--env KEYSYNC_ADMIN_LISTEN=127.0.0.1:0 \
	--env KEYSYNC_MIGRATE=false \
	--env LOG_FORMAT=json \
	"$image" >/dev/null

running() {
	[ "$(podman inspect --format '{{.State.Running}}' "$container")" = true ] ||
		fail "keysync serve exited with status $(podman inspect --format '{{.State.ExitCode}}' "$container")"
}
# keysync logs the address it bound ("keysync serving", addr).
serving() {
	running
	addr=$(podman logs "$container" 2>&1 | jq -Rr 'fromjson? | select(.message == "keysync serving") | .addr')
	[ -n "$addr" ]
}
until_ok "keysync serving" serving
ready() {
	running
	[ "$(curl -s -o "$tmp/readyz" -w '%{http_code}' "http://$addr/readyz")" = 200 ]
}
until_ok "/readyz 200" ready
ok "GET http://$addr/readyz answered 200: $(tr -d '\n' <"$tmp/readyz")"

# What the kernel says about the running process (the container's PID 1 is keysync).
pid=$(podman inspect --format '{{.State.Pid}}' "$container")
uids=$(awk '/^Uid:/ {print $2, $3, $4, $5}' "/proc/$pid/status")
[ "$uids" = "$uid $uid $uid $uid" ] || fail "keysync runs with uids $uids, want $uid"
caps=$(awk '/^CapEff:/ {print $2}' "/proc/$pid/status")
[ "$caps" = 0000000000000000 ] || fail "keysync has capabilities $caps"
nnp=$(awk '/^NoNewPrivs:/ {print $2}' "/proc/$pid/status")
[ "$nnp" = 1 ] || fail "keysync may gain privileges (NoNewPrivs $nnp)"
root_opts=$(awk '$5 == "/" {print $6}' "/proc/$pid/mountinfo")
[[ ",$root_opts," == *,ro,* ]] || fail "keysync's root filesystem is mounted $root_opts"
ok "serve runs as uid $uid, no capabilities, no_new_privs, root filesystem mounted ro"

step "a webhook makes a license key through the image"
# The sandbox delivers Stripe's events to the container, signed with the secret keysync has.
jq -n --arg url "http://$addr/webhooks/stripe" --arg secret "$(envval STRIPE_WEBHOOK_SECRETS)" \
	'{url: $url, secrets: [$secret]}' >"$tmp/endpoint.json"
control_post() { curl -sS --fail-with-body -H 'Content-Type: application/json' --data-binary "@${2:--}" "$control$1"; }
control_post /stripe/endpoints "$tmp/endpoint.json" >/dev/null
prod=$(jq -n --arg p "$product" '{name: "Image test", metadata: {skm_product_id: $p}}' | control_post /stripe/products | jq -r .id)
price=$(jq -n --arg p "$prod" '{product: $p, unit_amount: 2900}' | control_post /stripe/prices | jq -r .id)
sub=$(jq -n --arg p "$price" '{email: "image-test@example.com", items: [{price: $p, quantity: 1}]}' |
	control_post /stripe/checkout | jq -r .subscription)
[[ "$sub" == sub_* ]] || fail "checkout made no subscription: $sub"
control_post /stripe/flush </dev/null >/dev/null
stats=$(curl -sS --fail-with-body "$control/stripe/endpoints" | jq -c '.[0].stats')
[ "$(jq '.Events > 0 and .Acknowledged == .Events and .Failed == 0' <<<"$stats")" = true ] ||
	fail "webhook deliveries: $stats"
ok "keysync acknowledged every webhook of a checkout: $(jq -r '"\(.Events) events, \(.Acknowledged) acknowledged, \(.Failed) failed"' <<<"$stats")"

# The Sync runs as a River job: the key and its audit row come a little after the webhook.
key_made() {
	running
	[ "$(psql -d "$db" -Atc "SELECT count(*) FROM audit_log WHERE subscription_id = '$sub'
		AND action = 'create_key' AND outcome = 'applied' AND cause = 'webhook'")" = 1 ]
}
until_ok "a create_key audit row for $sub" key_made
keys=$(curl -sS --fail-with-body "$control/cryptolens/keys?product=$product" |
	jq --arg n "stripe:$sub" '[.[] | select((.Notes | contains($n)) and (.Block | not))] | length')
[ "$keys" = 1 ] || fail "Cryptolens holds $keys unblocked keys for $sub, want 1"
ok "the Sync ran: one unblocked Cryptolens key for $sub, audited create_key/applied/webhook"

# The test credentials must not appear in what keysync logged.
podman logs "$container" >"$tmp/keysync.log" 2>&1
for name in STRIPE_API_KEY STRIPE_WEBHOOK_SECRETS CRYPTOLENS_TOKEN; do
	! grep -qF -- "$(envval "$name")" "$tmp/keysync.log" || fail "keysync logged $name's value"
done
ok "no secret in keysync's $(wc -l <"$tmp/keysync.log") log lines"

step "stop: SIGTERM, as podman stop and Kubernetes send it"
podman stop --time 45 "$container" >/dev/null
status=$(podman inspect --format '{{.State.ExitCode}}' "$container")
[ "$status" = 0 ] || fail "keysync serve exited with status $status after SIGTERM"
ok "keysync serve shut down cleanly (exit status 0)"

printf '\nimage-test: PASS (%s)\n' "$(podman image inspect --format '{{.Size}} bytes' "$image")"
for v in "${verified[@]}"; do
	printf '  - %s\n' "$v"
done
