#!/usr/bin/env bash
# A real one-node SLURM cluster on this machine, for tests and trials (Debian packages, run as root).
#   slurm/local-cluster.sh up       install slurmctld/slurmd/slurm-client/munge if missing, start them
#   slurm/local-cluster.sh down     stop what `up` started and remove the state folder
#   slurm/local-cluster.sh status   exit 0 when the cluster answers (prints sinfo)
# Loopback only (CommunicationParameters=NoInAddrAny,NoCtldInAddrAny, NodeAddr=127.0.0.1). Configuration,
# state, logs and pid files live in $VAEFORGE_SLURM_DIR (default /tmp/vaeforge-slurm). Clients need
#   export SLURM_CONF=$VAEFORGE_SLURM_DIR/slurm.conf        (`slurm=local` in vaeforge.submit sets it itself)
set -euo pipefail
DIR=${VAEFORGE_SLURM_DIR:-/tmp/vaeforge-slurm}
CONF=$DIR/slurm.conf
HOST=$(hostname -s)
export SLURM_CONF=$CONF

die() { echo "local-cluster: $*" >&2; exit 1; }
# the CPUs this machine has: GNU nproc also obeys OMP_NUM_THREADS, which test workers set to 1
machine_cpus() { env -u OMP_NUM_THREADS -u OMP_THREAD_LIMIT nproc; }

install_packages() {
  local missing=0
  for cmd in slurmctld slurmd sinfo sbatch munged; do
    command -v "$cmd" >/dev/null 2>&1 || [ -x "/usr/sbin/$cmd" ] || missing=1
  done
  [ "$missing" = 0 ] && return
  export DEBIAN_FRONTEND=noninteractive
  local pkgs=(slurmctld slurmd slurm-client munge)
  apt-get install -y -qq --no-install-recommends "${pkgs[@]}" >/dev/null 2>&1 \
    || { apt-get update -qq && apt-get install -y -qq --no-install-recommends "${pkgs[@]}" >/dev/null; } \
    || die "could not install ${pkgs[*]} with apt-get"
}

munge_works() { munge -n 2>/dev/null | unmunge >/dev/null 2>&1; }

start_munge() {
  munge_works && return  # a munged is already serving the default socket: use it
  [ -s /etc/munge/munge.key ] || { mungekey --create >/dev/null 2>&1 || die "no /etc/munge/munge.key"; }
  chown munge:munge /etc/munge/munge.key && chmod 400 /etc/munge/munge.key
  mkdir -p /run/munge && chown munge:munge /run/munge && chmod 755 /run/munge
  runuser -u munge -- /usr/sbin/munged --force
  for _ in $(seq 50); do munge_works && break; sleep 0.1; done
  munge_works || die "munged did not start"
  cat /run/munge/munged.pid > "$DIR/munged.pid"  # ours: `down` stops it
}

write_conf() {
  local cpus mem
  cpus=$(machine_cpus)
  mem=$(( $(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 / 2 ))
  mkdir -p "$DIR/state" "$DIR/spool"
  cat > "$CONF" <<EOF
ClusterName=vaeforge-local
SlurmctldHost=$HOST(127.0.0.1)
SlurmctldPort=${VAEFORGE_SLURMCTLD_PORT:-6817}
SlurmdPort=${VAEFORGE_SLURMD_PORT:-6818}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=cred_expire=5
CommunicationParameters=NoInAddrAny,NoCtldInAddrAny
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool
SlurmctldPidFile=$DIR/slurmctld.pid
SlurmdPidFile=$DIR/slurmd.pid
SlurmctldLogFile=$DIR/slurmctld.log
SlurmdLogFile=$DIR/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
MpiDefault=none
ReturnToService=2
KillWait=30
SchedulerParameters=sched_interval=1,bf_interval=1
NodeName=$HOST NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem State=UNKNOWN
PartitionName=debug Nodes=$HOST Default=YES MaxTime=INFINITE State=UP
EOF
}

alive() { [ -s "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

up() {
  [ "$(id -u)" = 0 ] || die "needs root (slurmctld/slurmd run as root, munged as munge)"
  if alive "$DIR/slurmctld.pid" && alive "$DIR/slurmd.pid"; then
    echo "local cluster already up; export SLURM_CONF=$CONF"
    return
  fi
  install_packages
  mkdir -p "$DIR"
  start_munge
  write_conf
  alive "$DIR/slurmctld.pid" || /usr/sbin/slurmctld -f "$CONF"
  alive "$DIR/slurmd.pid" || /usr/sbin/slurmd -f "$CONF"
  for _ in $(seq 150); do
    state=$(sinfo -h -o %T 2>/dev/null || true)
    case "$state" in idle*|mixed*|allocated*) echo "local cluster up ($HOST, $(machine_cpus) CPUs); export SLURM_CONF=$CONF"; return;; esac
    sleep 0.2
  done
  die "the node did not become idle (see $DIR/slurmctld.log and $DIR/slurmd.log)"
}

stop_pid() {  # stop the process whose pid is in file $1, wait for it to go
  alive "$1" || return 0
  local pid; pid=$(cat "$1")
  kill "$pid" 2>/dev/null || true
  for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.1; done
  kill -9 "$pid" 2>/dev/null || true
}

down() {
  [ -d "$DIR" ] || { echo "local cluster not up"; return; }
  if alive "$DIR/slurmctld.pid"; then scancel --full "--user=$(id -un)" 2>/dev/null || true; fi
  stop_pid "$DIR/slurmd.pid"
  stop_pid "$DIR/slurmctld.pid"
  stop_pid "$DIR/munged.pid"
  rm -rf "$DIR"
  echo "local cluster down"
}

status() {
  alive "$DIR/slurmctld.pid" && alive "$DIR/slurmd.pid" && sinfo || { echo "local cluster not up"; exit 1; }
}

case "${1:-}" in
  up) up ;;
  down) down ;;
  status) status ;;
  *) echo "usage: $0 up|down|status" >&2; exit 2 ;;
esac
