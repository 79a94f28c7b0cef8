#!/usr/bin/env bash
# Set up everything ferrogen's tests and demo need on a Debian 12 machine, as root.
# Idempotent: every step checks what is already there and skips or repairs.
#
#   apt packages  -> openssh, sudo, doas, python3 (the targets' /usr/bin/python3), procps, iproute2
#   Rust build    -> cargo build --release --workspace  (target/release/ferrogen-mux)
#   .venv         -> pinned ansible-core, pytest, ruff from ci/requirements.txt, and
#                    community.docker (vanilla's docker plugin, for comparison)
#   plugin/       -> compiled to bytecode, as pip would compile an installed package
#   sshd          -> a private sshd on 127.0.0.1:2222 (.state/sshd/), key login for root and ferrotest
#   test users    -> ferrotest, ferrosudo, ferrosu, ferronopw with sudo/su/doas rules for become tests;
#                    ferropw logs in by password only
#   inventory     -> .state/inventory.ini
#   docker image  -> ferrogen-target:2 (ci/target-image.sh), where a Docker Engine runs;
#                    podman from apt and the same image in podman's store, there too
#
# Knobs (environment):
#   FERROGEN_SETUP_SSHD=0   skip users, sshd and the ssh part of the inventory check (the demo uses this)
#   FERROGEN_SETUP_CARGO=0  skip the Rust build
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
STATE="$REPO/.state"
VENV="$REPO/.venv"
SSHD_DIR="$STATE/sshd"
# FERROGEN_SSH_PORT lets a second checkout run its own sshd beside this one's.
SSH_PORT="${FERROGEN_SSH_PORT:-2222}"
KEY="$STATE/id_ed25519"
SETUP_SSHD="${FERROGEN_SETUP_SSHD:-1}"
SETUP_CARGO="${FERROGEN_SETUP_CARGO:-1}"
export DEBIAN_FRONTEND=noninteractive
export PATH="/root/.cargo/bin:$PATH:/usr/sbin:/sbin"

log() { printf '[setup] %s\n' "$*" >&2; }
die() { printf '[setup] ERROR: %s\n' "$*" >&2; exit 1; }

[ "$(id -u)" = 0 ] || die "must run as root (it installs packages, creates users and starts sshd)"
mkdir -p "$STATE"

# ---------------------------------------------------------------- apt packages
APT_PACKAGES=(openssh-server openssh-client sudo opendoas python3 python3-venv procps iproute2)
missing=()
for p in "${APT_PACKAGES[@]}"; do
    if [ "$(dpkg-query -W -f='${db:Status-Status}' "$p" 2>/dev/null || true)" != installed ]; then
        missing+=("$p")
    fi
done
if [ "${#missing[@]}" -gt 0 ]; then
    log "installing apt packages: ${missing[*]}"
    apt-get update -q
    apt-get install -y -q --no-install-recommends "${missing[@]}" </dev/null
else
    log "apt packages already installed"
fi
[ -x /usr/bin/python3 ] || die "/usr/bin/python3 missing after apt install (targets need it)"

# ---------------------------------------------------------------- Rust build
if [ "$SETUP_CARGO" = 1 ]; then
    command -v cargo >/dev/null || die "cargo not found on PATH (expected rustup's /root/.cargo/bin)"
    if [ -f "$REPO/Cargo.toml" ]; then
        log "cargo build --release --workspace"
        (cd "$REPO" && cargo build --release --workspace)
    else
        log "WARNING: no Cargo.toml at $REPO; skipping the Rust build"
    fi
else
    log "FERROGEN_SETUP_CARGO=0: skipping the Rust build"
fi

# ---------------------------------------------------------------- container image
# The container tests' target image, built from this machine's files (ci/target-image.sh), once.
if command -v docker >/dev/null 2>&1 && docker info >/dev/null 2>&1; then
    bash "$REPO/ci/target-image.sh" docker
    # Where containers run, the podman kind is tested against real containers too.
    if ! command -v podman >/dev/null 2>&1; then
        log "installing podman"
        apt-get install -y -q --no-install-recommends podman </dev/null >/dev/null \
            || { apt-get update -q && apt-get install -y -q --no-install-recommends podman </dev/null; }
    fi
    bash "$REPO/ci/target-image.sh" podman
else
    log "no running Docker Engine: the docker container tests will be skipped"
fi

# ---------------------------------------------------------------- controller Pythons
# Each ansible-core in ci/ansible-versions.txt runs on a controller Python it supports, found
# at run time: pyenv's versions first, then pythonX.Y on PATH (each one is run to check it works).
ANSIBLE_VERSIONS="$REPO/ci/ansible-versions.txt"
find_python() {  # X.Y... -> the path of the first one that runs, on stdout
    local minor candidate root
    root="$(pyenv root 2>/dev/null || echo "${PYENV_ROOT:-$HOME/.pyenv}")"
    for minor in "$@"; do
        for candidate in "$root"/versions/"$minor".*/bin/python"$minor" "$(command -v "python$minor" || true)"; do
            if [ -x "$candidate" ] && "$candidate" -c 'import sys, venv' 2>/dev/null; then
                echo "$candidate"
                return 0
            fi
        done
    done
    return 1
}
ansible_versions() {  # prints "version python..." lines of ci/ansible-versions.txt
    grep -v '^[[:space:]]*\(#\|$\)' "$ANSIBLE_VERSIONS"
}
read -r PRIMARY_ANSIBLE PRIMARY_PYTHONS < <(ansible_versions | head -n1)
grep -qxF "ansible-core==$PRIMARY_ANSIBLE" "$REPO/ci/requirements.txt" \
    || die "ci/requirements.txt must pin ansible-core==$PRIMARY_ANSIBLE, the first line of ci/ansible-versions.txt"
# shellcheck disable=SC2086 # a list of versions
CONTROLLER_PYTHON="$(find_python $PRIMARY_PYTHONS)" \
    || die "ansible-core $PRIMARY_ANSIBLE needs one of Python $PRIMARY_PYTHONS on the controller; none found under $(pyenv root 2>/dev/null || echo "${PYENV_ROOT:-$HOME/.pyenv}")/versions or on PATH"

# ---------------------------------------------------------------- virtualenv
REQ="$REPO/ci/requirements.txt"
REQ_SUM="$(sha256sum "$REQ" | cut -d' ' -f1)"
if [ ! -x "$VENV/bin/python" ] || ! "$VENV/bin/python" -c 'import sys' 2>/dev/null \
    || [ "$("$VENV/bin/python" -c 'import sys; print(sys.version)')" != "$("$CONTROLLER_PYTHON" -c 'import sys; print(sys.version)')" ]; then
    log "creating virtualenv $VENV with $CONTROLLER_PYTHON ($("$CONTROLLER_PYTHON" --version 2>&1))"
    rm -rf "$VENV"
    "$CONTROLLER_PYTHON" -m venv "$VENV"
fi
if [ "$(cat "$VENV/.ferrogen-requirements" 2>/dev/null || true)" = "$REQ_SUM" ] \
    && "$VENV/bin/python" -m pip check >/dev/null 2>&1 \
    && [ -x "$VENV/bin/ansible-playbook" ] && [ -x "$VENV/bin/pytest" ] && [ -x "$VENV/bin/ruff" ]; then
    log "virtualenv already has ci/requirements.txt"
else
    log "pip install -r ci/requirements.txt"
    "$VENV/bin/python" -m pip install -q --disable-pip-version-check -r "$REQ"
    echo "$REQ_SUM" >"$VENV/.ferrogen-requirements"
fi
VENV_PY="$VENV/bin/python"

# ---------------------------------------------------------------- vanilla's docker plugin
# The docker tests compare ferrogen with community.docker's own connection plugin. That
# collection ships in the community `ansible` package; only its folder is taken from the wheel,
# into the venv's site-packages, where Ansible finds collections without ansible-galaxy.
COMMUNITY_WHEEL_PIN="ansible==14.5.0"
SITE_PACKAGES="$("$VENV_PY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
if [ -f "$SITE_PACKAGES/ansible_collections/community/docker/MANIFEST.json" ]; then
    log "community.docker already in the virtualenv"
else
    log "community.docker from $COMMUNITY_WHEEL_PIN"
    rm -rf "$STATE/community-wheel"
    "$VENV_PY" -m pip download -q --disable-pip-version-check --no-deps -d "$STATE/community-wheel" "$COMMUNITY_WHEEL_PIN"
    "$VENV_PY" - "$SITE_PACKAGES" "$STATE"/community-wheel/*.whl <<'PY'
import sys, zipfile
site_packages, wheel = sys.argv[1], zipfile.ZipFile(sys.argv[2])
wheel.extractall(site_packages, [n for n in wheel.namelist() if n.startswith('ansible_collections/community/docker/')])
PY
    rm -rf "$STATE/community-wheel"
fi

# ---------------------------------------------------------------- plugin bytecode
# pip compiles what it installs; a checkout's plugin would be compiled again by every
# ansible-playbook run wherever PYTHONDONTWRITEBYTECODE is set (as on these machines).
"$VENV_PY" -m compileall -q "$REPO/plugin" >/dev/null

# ---------------------------------------------------------------- other ansible-core versions
# One venv per other line of ci/ansible-versions.txt, .state/ansible/<version>, for the smoke set
# (tests/test_ansible_versions.py); a venv whose stamp matches its line is kept.
mkdir -p "$STATE/ansible"
while read -r version pythons; do
    [ "$version" = "$PRIMARY_ANSIBLE" ] && continue
    venv="$STATE/ansible/$version"
    # shellcheck disable=SC2086 # a list of versions
    python="$(find_python $pythons)" \
        || die "ansible-core $version needs one of Python $pythons on the controller; none found"
    stamp="ansible-core==$version $("$python" -c 'import sys; print(sys.version.split()[0])')"
    if [ "$(cat "$venv/.ferrogen-ansible" 2>/dev/null || true)" = "$stamp" ] && [ -x "$venv/bin/ansible-playbook" ]; then
        # The plugin's bytecode for this venv's Python, fresh after every edit (see above).
        "$venv/bin/python" -m compileall -q "$REPO/plugin" >/dev/null
        continue
    fi
    log "virtualenv $venv: ansible-core $version on $python"
    rm -rf "$venv"
    "$python" -m venv "$venv"
    "$venv/bin/python" -m pip install -q --disable-pip-version-check "ansible-core==$version"
    "$venv/bin/python" -m compileall -q "$REPO/plugin" >/dev/null
    echo "$stamp" >"$venv/.ferrogen-ansible"
done < <(ansible_versions)
log "ansible-core versions: $(ls "$STATE/ansible" | tr '\n' ' ')"

write_inventory() {
    cat >"$STATE/inventory.ini" <<EOF
# Written by ci/setup.sh. Targets for the integration tests: the private sshd on
# 127.0.0.1:$SSH_PORT (as root and as the unprivileged user ferrotest) and the local connection.
[ssh]
sshroot ansible_host=127.0.0.1 ansible_port=$SSH_PORT ansible_user=root ansible_ssh_private_key_file=$KEY ansible_python_interpreter=/usr/bin/python3
sshuser ansible_host=127.0.0.1 ansible_port=$SSH_PORT ansible_user=ferrotest ansible_ssh_private_key_file=$KEY ansible_python_interpreter=/usr/bin/python3

[local]
localhost ansible_connection=local ansible_python_interpreter=$VENV_PY

[all:vars]
ansible_ssh_common_args='-o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null'
EOF
}

if [ "$SETUP_SSHD" != 1 ]; then
    log "FERROGEN_SETUP_SSHD=0: skipping test users and sshd"
    write_inventory
    log "done"
    exit 0
fi

# ---------------------------------------------------------------- test users
ensure_user() {  # name
    if ! id "$1" >/dev/null 2>&1; then
        log "creating user $1"
        useradd --create-home --home-dir "/home/$1" --shell /bin/bash "$1"
    fi
    mkdir -p "/home/$1"
    chown "$1:" "/home/$1"
}
ensure_user ferrotest
ensure_user ferrosudo
ensure_user ferrosu
ensure_user ferronopw
ensure_user ferrotty   # passwordless sudo, but sudoers requiretty
ensure_user ferrologin # logs in only in the one-connection test, so its sshd logins can be counted
ensure_user ferropw    # has no key: logs in with its password only (tests/test_ssh_login.py)
# Thirty accounts for the become-churn test (more accounts than MITOGEN_MAX_INTERPRETERS).
for n in $(seq -w 1 30); do ensure_user "ferrob$n"; done
chpasswd <<'EOF'
ferrotest:testpass
ferrosudo:sudopass
ferrosu:supass
ferropw:ferropw-secret-31
EOF
usermod -p '*' ferronopw   # no password login, but not a locked account
usermod -p '*' ferrotty
usermod -p '*' ferrologin

SUDOERS=/etc/sudoers.d/ferrogen-ci
cat >"$SUDOERS.tmp" <<'EOF'
# Written by ferrogen ci/setup.sh for become tests.
ferrotest ALL=(ALL) ALL
ferrosudo ALL=(ALL) ALL
ferronopw ALL=(ALL) NOPASSWD: ALL
ferrologin ALL=(ALL) NOPASSWD: ALL
Defaults:ferrotty requiretty
ferrotty ALL=(ALL) NOPASSWD: ALL
EOF
chmod 0440 "$SUDOERS.tmp"
visudo -cf "$SUDOERS.tmp" >/dev/null || die "generated sudoers file does not validate"
mv "$SUDOERS.tmp" "$SUDOERS"

touch /etc/doas.conf
# ferrotest -> root for become tests; root -> anyone for the mitogen_doas connection type.
for DOAS_RULE in 'permit nopass ferrotest as root' 'permit nopass root'; do
    if ! grep -qxF "$DOAS_RULE" /etc/doas.conf; then
        # doas needs the file to end with a newline
        if [ -s /etc/doas.conf ] && [ "$(tail -c1 /etc/doas.conf | od -An -c | tr -d ' ')" != '\n' ]; then
            echo >>/etc/doas.conf
        fi
        echo "$DOAS_RULE" >>/etc/doas.conf
    fi
done
chown root:root /etc/doas.conf
chmod 0600 /etc/doas.conf

# ---------------------------------------------------------------- client key
if [ ! -f "$KEY" ] || [ ! -f "$KEY.pub" ]; then
    log "generating client key $KEY"
    rm -f "$KEY" "$KEY.pub"
    ssh-keygen -q -t ed25519 -N '' -C ferrogen-ci -f "$KEY" </dev/null
fi
chmod 0600 "$KEY"
PUBKEY="$(cut -d' ' -f1,2 "$KEY.pub") ferrogen-ci"

authorize() {  # user home
    local user="$1" home="$2" ak="$2/.ssh/authorized_keys"
    mkdir -p "$home/.ssh"
    touch "$ak"
    # add this checkout's key once; other checkouts' keys stay (their sshd may be in use)
    grep -vxF "$PUBKEY" "$ak" >"$ak.tmp" || true
    echo "$PUBKEY" >>"$ak.tmp"
    mv "$ak.tmp" "$ak"
    chmod 0700 "$home/.ssh"
    chmod 0600 "$ak"
    chown -R "$user:" "$home/.ssh"
}
authorize root /root
authorize ferrotest /home/ferrotest
authorize ferrosudo /home/ferrosudo
authorize ferronopw /home/ferronopw
authorize ferrologin /home/ferrologin

# ---------------------------------------------------------------- sshd
mkdir -p "$SSHD_DIR" /run/sshd
chmod 0755 /run/sshd
for t in ed25519 rsa; do
    if [ ! -f "$SSHD_DIR/ssh_host_${t}_key" ]; then
        ssh-keygen -q -t "$t" -N '' -C ferrogen-ci-host -f "$SSHD_DIR/ssh_host_${t}_key" </dev/null
    fi
    chmod 0600 "$SSHD_DIR/ssh_host_${t}_key"
done
SFTP_SERVER=/usr/lib/openssh/sftp-server
cat >"$SSHD_DIR/sshd_config.new" <<EOF
# Written by ferrogen ci/setup.sh: a private sshd for the integration tests.
Port $SSH_PORT
ListenAddress 127.0.0.1
HostKey $SSHD_DIR/ssh_host_ed25519_key
HostKey $SSHD_DIR/ssh_host_rsa_key
PidFile $SSHD_DIR/sshd.pid
PermitRootLogin prohibit-password
PubkeyAuthentication yes
AuthorizedKeysFile .ssh/authorized_keys
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM yes
StrictModes no
UseDNS no
MaxStartups 200:30:400
MaxSessions 200
MaxAuthTries 10
AcceptEnv LANG LC_*
X11Forwarding no
PrintMotd no
Subsystem sftp $SFTP_SERVER
# Password logins (both ssh methods) for the one account that has no key.
Match User ferropw
    PasswordAuthentication yes
    KbdInteractiveAuthentication yes
EOF
/usr/sbin/sshd -t -f "$SSHD_DIR/sshd_config.new" || die "sshd config test failed ($SSHD_DIR/sshd_config.new)"

# A test sshd left by an earlier setup keeps running when its config is unchanged (restarting it
# would drop new connections of a run that is using it right now); otherwise it is restarted.
# FERROGEN_SSHD_RESTART=1 forces a restart.
running=""
old="$(cat "$SSHD_DIR/sshd.pid" 2>/dev/null || true)"
if [ -n "$old" ] && kill -0 "$old" 2>/dev/null && grep -q sshd "/proc/$old/cmdline" 2>/dev/null; then
    running="$old"
fi
if [ -n "$running" ] && [ "${FERROGEN_SSHD_RESTART:-0}" != 1 ] \
    && cmp -s "$SSHD_DIR/sshd_config.new" "$SSHD_DIR/sshd_config"; then
    rm -f "$SSHD_DIR/sshd_config.new"
    log "test sshd already running with this config (pid $running)"
else
    if [ -n "$running" ]; then
        log "stopping previous test sshd (pid $running)"
        kill "$running" || true
        for _ in $(seq 50); do kill -0 "$running" 2>/dev/null || break; sleep 0.1; done
        kill -0 "$running" 2>/dev/null && kill -9 "$running" 2>/dev/null || true
    fi
    rm -f "$SSHD_DIR/sshd.pid"
    mv "$SSHD_DIR/sshd_config.new" "$SSHD_DIR/sshd_config"
    log "starting sshd on 127.0.0.1:$SSH_PORT (log: $SSHD_DIR/sshd.log)"
    /usr/sbin/sshd -f "$SSHD_DIR/sshd_config" -E "$SSHD_DIR/sshd.log" </dev/null
    for _ in $(seq 50); do
        [ -s "$SSHD_DIR/sshd.pid" ] && break
        sleep 0.1
    done
    [ -s "$SSHD_DIR/sshd.pid" ] || die "sshd did not start; see $SSHD_DIR/sshd.log"
fi

# ---------------------------------------------------------------- verify
for user in root ferrotest; do
    ok=0
    for _ in $(seq 30); do
        if ssh -i "$KEY" -p "$SSH_PORT" -o BatchMode=yes -o StrictHostKeyChecking=no \
            -o UserKnownHostsFile=/dev/null -o LogLevel=ERROR -o ConnectTimeout=5 \
            "$user@127.0.0.1" true </dev/null; then
            ok=1
            break
        fi
        sleep 0.2
    done
    [ "$ok" = 1 ] || die "ssh $user@127.0.0.1:$SSH_PORT with $KEY failed; see $SSHD_DIR/sshd.log"
    log "ssh $user@127.0.0.1:$SSH_PORT ok"
done

write_inventory
log "done: inventory $STATE/inventory.ini"
