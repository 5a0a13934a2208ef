#!/usr/bin/env bash
# Bring up / tear down a real, single-host Slurm 22.05 cluster (Debian bookworm) for tests.
#
#   bash tests/slurm/cluster.sh up [--no-accounting]  # install if missing, (re)configure, start; idempotent
#   bash tests/slurm/cluster.sh down                  # stop every daemon this script started
#   bash tests/slurm/cluster.sh status                # print state; exit 0 only if the cluster accepts jobs
#   bash tests/slurm/cluster.sh env                   # `export ...` lines for a test harness to eval
#
# Exit codes: 0 ok, 1 failure, 2 usage, 3 cannot run here (not root / no apt-get) -> tests should skip.
#
# Layout: two compute nodes (node1, node2) are two slurmd processes on this host, both at 127.0.0.1
# with distinct ports and spool dirs; one partition `debug`.  The config goes to /etc/slurm/slurm.conf
# so plain sbatch/squeue/sacct work without any environment.  Daemons are started directly (the
# container has no systemd); pid files and logs live under $STATE_DIR.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
STATE_DIR=${TEXT_RECIPES_SLURM_STATE:-/var/tmp/text-recipes-slurm}
CONF_DIR=/etc/slurm
SLURM_CONF_FILE=$CONF_DIR/slurm.conf
DBD_CONF_FILE=$CONF_DIR/slurmdbd.conf
GRES_CONF_FILE=$CONF_DIR/gres.conf
GRACE_SECONDS=30      # GraceTime of the preemptable partitions: SIGTERM, then this long to checkpoint
OTHER_USER=tr-other   # a second Unix user, whose jobs `torchx list` must not show
CLUSTER=textrecipes
NODES=(node1 node2)
CTLD_PORT=6817
SLURMD_PORT=6818
NODE_PORTS=(17001 17002)
DBD_PORT=6819
DB_NAME=slurm_acct_db
DB_USER=slurm
DB_PASS=text-recipes-slurm
MYSQL_SOCK=/run/mysqld/mysqld.sock   # libmariadb's default, so slurmdbd finds it with StorageHost=localhost
MUNGE_SOCK=/run/munge/munge.socket.2
PACKAGES=(slurm-wlm slurm-client munge slurmdbd mariadb-server mariadb-client)

RUN=$STATE_DIR/run
LOG=$STATE_DIR/log

die() { echo "cluster.sh: $*" >&2; exit 1; }
say() { echo "cluster.sh: $*"; }

# pid_alive PIDFILE -> true if the file names a live process of the expected program
# (slurmd-node1.pid -> slurmd), so a stale pid file whose pid got reused does not count.
pid_alive() {
    local pid name
    [[ -r $1 ]] || return 1
    pid=$(tr -dc 0-9 <"$1")
    name=$(basename "$1" .pid); name=${name%%-*}
    [[ -n $pid && -d /proc/$pid ]] || return 1   # not kill -0: status also works for non-root
    if [[ $name == kick ]]; then grep -qa _kick "/proc/$pid/cmdline" 2>/dev/null
    else [[ $(cat "/proc/$pid/comm" 2>/dev/null) == "$name"* ]]; fi
}

# wait_for SECONDS CMD... -> poll CMD every 0.5 s until it succeeds.
wait_for() {
    local deadline=$((SECONDS + $1)); shift
    until "$@" >/dev/null 2>&1; do
        ((SECONDS < deadline)) || return 1
        sleep 0.5
    done
}

# stop_pidfile NAME PIDFILE -> SIGTERM, wait up to 15 s, then SIGKILL.
stop_pidfile() {
    local name=$1 pidfile=$2 pid i
    if pid_alive "$pidfile"; then
        pid=$(tr -dc 0-9 <"$pidfile")
        kill -TERM "$pid" 2>/dev/null || true
        for ((i = 0; i < 30; i++)); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
        if kill -0 "$pid" 2>/dev/null; then
            say "$name ($pid) ignored SIGTERM; killing"
            kill -KILL "$pid" 2>/dev/null || true
        fi
        say "stopped $name"
    fi
    rm -f "$pidfile"
}

# Daemons must not inherit our stdout/stderr: a harness that captures `up`'s output would
# otherwise wait forever for EOF.
spawn() {  # spawn LOGFILE CMD...
    local logfile=$1; shift
    setsid "$@" </dev/null >>"$logfile" 2>&1 &
}

# munged and mariadbd drop privileges, so they get run/log subdirs owned by their users.
pidfile_of() {
    case $1 in
        munged) echo "$RUN/munge/munged.pid" ;;
        mariadbd) echo "$RUN/mysql/mariadbd.pid" ;;
        *) echo "$RUN/$1.pid" ;;
    esac
}

# accounting | no-accounting | down (written by `up`, removed by `down`)
current_mode() { cat "$STATE_DIR/mode" 2>/dev/null || echo down; }

# ---------------------------------------------------------------- install

check_can_run() {
    if [[ $(id -u) -ne 0 ]]; then echo "cluster.sh: SKIP: must run as root to install/start Slurm"; exit 3; fi
    if [[ $(uname -s) != Linux ]]; then echo "cluster.sh: SKIP: Linux only"; exit 3; fi
}

install_packages() {
    local missing=() p
    for p in "${PACKAGES[@]}"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
    done
    ((${#missing[@]})) || return 0
    if ! command -v apt-get >/dev/null; then
        echo "cluster.sh: SKIP: apt-get not available to install: ${missing[*]}"; exit 3
    fi
    say "installing ${missing[*]} (apt-get)"
    # Keep maintainer scripts from starting services (no init system here; we start them ourselves).
    local policy=/usr/sbin/policy-rc.d created_policy=0
    if [[ ! -e $policy ]]; then
        printf '#!/bin/sh\nexit 101\n' >"$policy"; chmod 755 "$policy"; created_policy=1
    fi
    local rc=0
    {
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}" \
            >"$LOG/apt.log" 2>&1 ||
            { apt-get update -q >>"$LOG/apt.log" 2>&1 &&
              DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}" \
                  >>"$LOG/apt.log" 2>&1; }
    } || rc=$?
    ((created_policy)) && rm -f "$policy"
    if ((rc)); then
        tail -5 "$LOG/apt.log" >&2
        echo "cluster.sh: SKIP: apt-get install failed (see $LOG/apt.log)"; exit 3
    fi
    return 0
}

# ---------------------------------------------------------------- munge

start_munge() {
    install -d -o munge -g munge -m 0700 /etc/munge /var/lib/munge /var/log/munge
    install -d -o munge -g munge -m 0755 /run/munge "$RUN/munge"
    if [[ ! -s /etc/munge/munge.key ]]; then
        say "creating /etc/munge/munge.key"
        if command -v mungekey >/dev/null; then
            mungekey --create --keyfile=/etc/munge/munge.key --force
        else
            dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
        fi
    fi
    chown munge:munge /etc/munge/munge.key
    chmod 0400 /etc/munge/munge.key
    # Reuse a munged someone else started (e.g. the package), as long as it works.
    if munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then return 0; fi
    rm -f "$MUNGE_SOCK" "$MUNGE_SOCK.lock"
    # munged insists that its log file is owned by the munge user.
    [[ -e $LOG/munged.log ]] || install -o munge -g munge -m 0640 /dev/null "$LOG/munged.log"
    chown munge:munge "$LOG/munged.log"
    runuser -u munge -- /usr/sbin/munged --pid-file="$(pidfile_of munged)" --log-file="$LOG/munged.log" \
        </dev/null >>"$LOG/munged.out" 2>&1 || true   # munged daemonizes itself
    wait_for 10 sh -c 'munge -n | unmunge' ||
        { tail -5 "$LOG/munged.out" "$LOG/munged.log" >&2; die "munged did not start"; }
    say "started munged"
}

# ---------------------------------------------------------------- mariadb + slurmdbd

mysql_up() { mariadb-admin --socket="$MYSQL_SOCK" -uroot ping; }

start_mariadb() {
    if ! mysql_up >/dev/null 2>&1; then
        install -d -o mysql -g mysql -m 0755 /run/mysqld "$RUN/mysql" "$LOG/mysql"
        if [[ ! -d /var/lib/mysql/mysql ]]; then
            say "initialising MariaDB data dir"
            mariadb-install-db --user=mysql --datadir=/var/lib/mysql --skip-test-db \
                --auth-root-authentication-method=socket >"$LOG/mariadb-install.log" 2>&1 ||
                { tail -5 "$LOG/mariadb-install.log" >&2; die "mariadb-install-db failed"; }
        fi
        # Socket only (no TCP port to collide with) and a small buffer pool: this is a test box.
        spawn "$LOG/mariadb.out" /usr/sbin/mariadbd --user=mysql --datadir=/var/lib/mysql \
            --socket="$MYSQL_SOCK" --pid-file="$(pidfile_of mariadbd)" --log-error="$LOG/mysql/mariadb.log" \
            --skip-networking --innodb-buffer-pool-size=64M --innodb-log-file-size=48M
        wait_for 60 mysql_up || { tail -20 "$LOG/mariadb.out" "$LOG/mysql/mariadb.log" >&2; die "MariaDB did not start"; }
        say "started mariadbd"
    fi
    mariadb --socket="$MYSQL_SOCK" -uroot <<SQL
CREATE DATABASE IF NOT EXISTS $DB_NAME;
CREATE USER IF NOT EXISTS '$DB_USER'@'localhost' IDENTIFIED BY '$DB_PASS';
GRANT ALL ON $DB_NAME.* TO '$DB_USER'@'localhost';
FLUSH PRIVILEGES;
SQL
}

write_dbd_conf() {
    local tmp
    tmp=$(mktemp)
    cat >"$tmp" <<EOF
# Generated by tests/slurm/cluster.sh -- do not edit by hand.
AuthType=auth/munge
DbdHost=$(hostname -s)
DbdAddr=127.0.0.1
DbdPort=$DBD_PORT
SlurmUser=root
PidFile=$RUN/slurmdbd.pid
LogFile=$LOG/slurmdbd.log
DebugLevel=info
StorageType=accounting_storage/mysql
StorageHost=localhost
StorageUser=$DB_USER
StoragePass=$DB_PASS
StorageLoc=$DB_NAME
EOF
    # slurmdbd refuses a config that others can read (it holds the DB password).
    install -o root -g root -m 0600 "$tmp" "$DBD_CONF_FILE"
    rm -f "$tmp"
}

start_slurmdbd() {
    pid_alive "$RUN/slurmdbd.pid" && return 0
    spawn "$LOG/slurmdbd.out" /usr/sbin/slurmdbd -D
    # sacctmgr talks to slurmdbd; it answers once the DB schema exists (first start creates it).
    wait_for 90 sacctmgr -n -P list cluster ||
        { tail -20 "$LOG/slurmdbd.log" >&2; die "slurmdbd did not come up"; }
    say "started slurmdbd"
}

register_cluster() {
    if ! sacctmgr -n -P list cluster format=cluster | grep -qx "$CLUSTER"; then
        sacctmgr -i add cluster "$CLUSTER" >/dev/null
        say "registered cluster $CLUSTER in slurmdbd"
    fi
}

# ---------------------------------------------------------------- slurmctld + slurmd

render_slurm_conf() {  # render_slurm_conf MODE -> stdout
    local acct
    if [[ $1 == accounting ]]; then
        acct="AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=127.0.0.1
AccountingStoragePort=$DBD_PORT
JobCompType=jobcomp/none"
    else
        acct="# --no-accounting: no slurmdbd, so sacct has nothing to query (like clusters without accounting).
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none"
    fi
    local line
    while IFS= read -r line; do
        line=${line//@CLUSTER@/$CLUSTER}
        line=${line//@HOST@/$(hostname -s)}
        line=${line//@STATE@/$STATE_DIR}
        line=${line//@CTLD_PORT@/$CTLD_PORT}
        line=${line//@SLURMD_PORT@/$SLURMD_PORT}
        line=${line//@NODE1_PORT@/${NODE_PORTS[0]}}
        line=${line//@NODE2_PORT@/${NODE_PORTS[1]}}
        line=${line//@GRACE@/$GRACE_SECONDS}
        [[ $line == @ACCOUNTING@ ]] && line=$acct
        printf '%s\n' "$line"
    done <"$HERE/slurm.conf.in"
}

# Two placeholder GPUs per node: slurmd hands them out as GRES and sets CUDA_VISIBLE_DEVICES from the
# file names' numbers; nothing opens them. Prints gres.conf.
write_gres_conf() {
    local n tmp
    tmp=$(mktemp)
    echo "# Generated by tests/slurm/cluster.sh -- do not edit by hand." >"$tmp"
    echo "AutoDetect=off" >>"$tmp"
    for n in "${NODES[@]}"; do
        install -d -m 0755 "$STATE_DIR/dev/$n"
        for i in 0 1; do  # slurmd wants character devices: NVIDIA's major number, no driver behind it
            [[ -c $STATE_DIR/dev/$n/nvidia$i ]] || { rm -f "$STATE_DIR/dev/$n/nvidia$i"
                mknod -m 0666 "$STATE_DIR/dev/$n/nvidia$i" c 195 "$i" 2>/dev/null ||
                    ln -s /dev/null "$STATE_DIR/dev/$n/nvidia$i"; }
        done
        echo "NodeName=$n Name=gpu Type=nvidia_h100_80gb_hbm3 File=$STATE_DIR/dev/$n/nvidia[0-1]" >>"$tmp"
    done
    cat "$tmp"
    rm -f "$tmp"
}

# Slurm 22.05 starts heterogeneous jobs (every TorchX slurm job is one) only from the backfill
# scheduler, and backfill runs only after some job/node/partition change.  A requeued het job
# becomes eligible when its BeginTime passes, which is no change, so it would sit PENDING until an
# unrelated event (often the 60 s purge of old jobs).  While jobs are pending, this loop touches
# the partition every 5 s (a no-op update that bumps last_part_update) so backfill looks again.
cmd_kick() {
    echo $$ >"$RUN/kick.pid"
    while pid_alive "$RUN/slurmctld.pid"; do
        if [[ -n $(squeue -h -t PENDING -o %i 2>/dev/null | head -1) ]]; then
            scontrol update PartitionName=debug State=UP >/dev/null 2>&1 || true
        fi
        sleep 5
    done
    rm -f "$RUN/kick.pid"
    exit 0   # exit here: never read on in a script file that may have been edited meanwhile
}

start_kick() {
    pid_alive "$RUN/kick.pid" && return 0
    spawn "$LOG/kick.log" bash "$HERE/cluster.sh" _kick
    wait_for 5 pid_alive "$RUN/kick.pid" || die "backfill kicker did not start"
}

stop_slurm() {
    local n
    stop_pidfile kick "$RUN/kick.pid"
    # Each slurmd takes ~2 s to exit; stop them in parallel.
    for n in "${NODES[@]}"; do stop_pidfile "slurmd $n" "$RUN/slurmd-$n.pid" & done
    wait
    stop_pidfile slurmctld "$RUN/slurmctld.pid"
}

nodes_ready() {
    # Both nodes respond (idle/mixed/allocated/completing, no `*` = not responding).
    local states
    states=$(sinfo -h -N -p debug -o '%N %t' 2>/dev/null | sort -u) || return 1
    [[ $(grep -cE '^node[12] (idle|mix|alloc|comp)$' <<<"$states") -eq 2 ]]
}

start_slurm() {
    local n i
    # the node names must resolve (torchrun's rendezvous and Ray's head address come from SLURM_JOB_NODELIST)
    for n in "${NODES[@]}"; do
        getent hosts "$n" >/dev/null || echo "127.0.0.1 $n" >>/etc/hosts
    done
    install -d -m 0755 "$STATE_DIR/ctld" "$STATE_DIR/spool"
    if ! pid_alive "$RUN/slurmctld.pid"; then
        spawn "$LOG/slurmctld.out" /usr/sbin/slurmctld -D
        wait_for 30 scontrol ping || { tail -20 "$LOG/slurmctld.log" >&2; die "slurmctld did not start"; }
        say "started slurmctld"
    fi
    for i in "${!NODES[@]}"; do
        n=${NODES[$i]}
        install -d -m 0755 "$STATE_DIR/spool/$n"
        if ! pid_alive "$RUN/slurmd-$n.pid"; then
            spawn "$LOG/slurmd-$n.out" /usr/sbin/slurmd -D -N "$n"
            say "started slurmd $n (port ${NODE_PORTS[$i]})"
        fi
    done
    if ! wait_for 30 nodes_ready; then
        # Nodes left DOWN/DRAIN by an earlier run: bring them back.
        scontrol update nodename=node1,node2 state=resume >/dev/null 2>&1 || true
        wait_for 30 nodes_ready || { sinfo -N >&2; tail -5 "$LOG"/slurmd-*.log >&2; die "nodes not ready"; }
    fi
    start_kick
}

# ---------------------------------------------------------------- commands

cmd_up() {
    local mode=accounting
    case ${1:-} in
        --no-accounting) mode=no-accounting ;;
        "") ;;
        *) echo "usage: $0 up [--no-accounting]" >&2; exit 2 ;;
    esac
    check_can_run
    install -d -m 0755 "$STATE_DIR" "$RUN" "$LOG" "$CONF_DIR"
    install_packages
    start_munge

    id -u "$OTHER_USER" >/dev/null 2>&1 || useradd --create-home --shell /bin/bash "$OTHER_USER"

    local new_conf new_gres
    new_conf=$(render_slurm_conf "$mode")
    new_gres=$(write_gres_conf)
    if [[ ! -f $SLURM_CONF_FILE ]] || [[ $(cat "$SLURM_CONF_FILE") != "$new_conf" ]] ||
        [[ ! -f $GRES_CONF_FILE ]] || [[ $(cat "$GRES_CONF_FILE") != "$new_gres" ]]; then
        # A mode switch changes AccountingStorageType, which needs a daemon restart (not just reconfigure).
        if pid_alive "$RUN/slurmctld.pid"; then say "configuration changed: restarting Slurm"; fi
        stop_slurm
        printf '%s\n' "$new_conf" >"$SLURM_CONF_FILE"
        printf '%s\n' "$new_gres" >"$GRES_CONF_FILE"
        chmod 0644 "$SLURM_CONF_FILE" "$GRES_CONF_FILE"
    fi

    if [[ $mode == accounting ]]; then
        start_mariadb
        write_dbd_conf
        start_slurmdbd
        register_cluster
    else
        stop_pidfile slurmdbd "$RUN/slurmdbd.pid"   # MariaDB may stay up; nothing uses it
    fi
    echo "$mode" >"$STATE_DIR/mode"
    start_slurm
    say "cluster up (mode: $mode, conf: $SLURM_CONF_FILE, state: $STATE_DIR)"
}

cmd_down() {
    stop_slurm
    stop_pidfile slurmdbd "$RUN/slurmdbd.pid"
    stop_pidfile mariadbd "$(pidfile_of mariadbd)"
    stop_pidfile munged "$(pidfile_of munged)"
    rm -f "$STATE_DIR/mode"
    say "cluster down"
}

cmd_status() {
    local ok=0 mode n
    mode=$(current_mode)
    echo "mode: $mode"
    for n in munged mariadbd slurmdbd slurmctld "${NODES[@]/#/slurmd-}" kick; do
        if pid_alive "$(pidfile_of "$n")"; then echo "$n: running (pid $(tr -dc 0-9 <"$(pidfile_of "$n")"))"
        else echo "$n: stopped"; fi
    done
    command -v scontrol >/dev/null || { echo "slurm: not installed"; return 1; }
    scontrol ping 2>&1 | sed 's/^/ping: /' || true
    scontrol ping >/dev/null 2>&1 || ok=1
    sinfo -N -o '%N %P %t %c %m' 2>&1 || ok=1
    nodes_ready || ok=1
    [[ $(sinfo -h -p debug -o '%a' 2>/dev/null | head -1) == up ]] || ok=1
    if [[ $mode == accounting ]]; then
        sacctmgr -n -P list cluster format=cluster 2>/dev/null | grep -qx "$CLUSTER" || { echo "slurmdbd: not answering"; ok=1; }
    fi
    if ((ok == 0)); then echo "state: up (accepting jobs)"; else echo "state: down/unhealthy"; fi
    return "$ok"
}

cmd_env() {
    echo "export SLURM_CONF=$SLURM_CONF_FILE"
    echo "export TEXT_RECIPES_SLURM_MODE=$(current_mode)"
    echo "export TEXT_RECIPES_SLURM_PARTITION=debug"
    echo "export TEXT_RECIPES_SLURM_STATE=$STATE_DIR"
    echo "export TEXT_RECIPES_SLURM_OTHER_USER=$OTHER_USER"
}

case ${1:-} in
    up) shift; cmd_up "$@" ;;
    down) cmd_down ;;
    status) cmd_status ;;
    env) cmd_env ;;
    _kick) cmd_kick ;;   # internal: the backfill kicker started by `up`
    *) echo "usage: $0 {up [--no-accounting]|down|status|env}" >&2; exit 2 ;;
esac
