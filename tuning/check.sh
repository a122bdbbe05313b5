#!/usr/bin/env bash
# Reports which host settings in tuning/README.md are off for running tessera
# on this machine. Read-only: it reads /proc, /sys and limits and changes
# nothing, so it is safe to run anywhere (containers and VMs included, where
# some items are simply not visible and say so).
#
# Usage: tuning/check.sh [--cores LIST]   (LIST as for `tessera serve --cores`,
#        e.g. 2-7 or 0,2,4; default: every CPU this process may use)
# Exit:  0 when it could judge the host (WARN lines included), 2 on bad usage.
set -uo pipefail

CORES=
while [ $# -gt 0 ]; do
  case "$1" in
    --cores) CORES=${2:-}; shift 2 ;;
    -h|--help) sed -n '2,10p' "$0"; exit 0 ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
done

WARNS=0
ok()   { printf '  ok    %s\n' "$*"; }
warn() { printf '  WARN  %s\n' "$*"; WARNS=$((WARNS + 1)); }
info() { printf '  info  %s\n' "$*"; }

# Expands "0-2,5" to "0 1 2 5".
expand_list() {
  local out= part a b
  IFS=',' read -ra parts <<<"$1"
  for part in "${parts[@]}"; do
    if [[ $part == *-* ]]; then
      a=${part%-*}; b=${part#*-}
      for ((i = a; i <= b; i++)); do out+="$i "; done
    elif [ -n "$part" ]; then
      out+="$part "
    fi
  done
  echo "$out"
}

if [ -z "$CORES" ]; then
  CORES=$(awk '/Cpus_allowed_list/ {print $2}' /proc/self/status)
fi
if ! [[ $CORES =~ ^[0-9,-]+$ ]]; then
  echo "bad --cores list: $CORES" >&2; exit 2
fi
SHARD_CPUS=$(expand_list "$CORES")
NSHARDS=$(wc -w <<<"$SHARD_CPUS")
ALLOWED=$(expand_list "$(awk '/Cpus_allowed_list/ {print $2}' /proc/self/status)")
ALL_CPUS=$(expand_list "$(cat /sys/devices/system/cpu/online 2>/dev/null || echo 0)")

read_sys() { [ -r "$1" ] && cat "$1" 2>/dev/null; }

echo "tessera host check: $(uname -sr), $(nproc --all) CPUs online, shard cores: $CORES ($NSHARDS)"

echo
echo "Process limits (of this shell; a systemd unit sets its own)"
memlock_kib=$(ulimit -H -l)
need_kib=$((NSHARDS * 512))
if [ "$memlock_kib" = unlimited ] || [ "$memlock_kib" -ge "$need_kib" ]; then
  ok "RLIMIT_MEMLOCK hard = $memlock_kib KiB (needs $need_kib KiB for $NSHARDS executors)"
else
  warn "RLIMIT_MEMLOCK hard = $memlock_kib KiB < $need_kib KiB: tessera will not start; LimitMEMLOCK=infinity or ulimit -l unlimited"
fi
nofile=$(ulimit -H -n)
if [ "$nofile" = unlimited ] || [ "$nofile" -ge 1048576 ]; then
  ok "RLIMIT_NOFILE hard = $nofile"
elif [ "$nofile" -ge 65536 ]; then
  info "RLIMIT_NOFILE hard = $nofile: enough for $((nofile - 64)) connections; LimitNOFILE=1048576 for more"
else
  warn "RLIMIT_NOFILE hard = $nofile: at most ~$((nofile - 64)) connections; LimitNOFILE=1048576"
fi
nr_open=$(read_sys /proc/sys/fs/nr_open)
[ -n "$nr_open" ] && info "fs.nr_open = $nr_open (ceiling for LimitNOFILE)"

echo
echo "CPU affinity"
for c in $SHARD_CPUS; do
  if ! grep -qw "$c" <<<"$ALLOWED"; then
    warn "CPU $c is not in this process's affinity mask ($(awk '/Cpus_allowed_list/ {print $2}' /proc/self/status)): --cores $CORES will be refused"
  fi
done
[ "$NSHARDS" -ge "$(wc -w <<<"$ALL_CPUS")" ] && [ "$(wc -w <<<"$ALL_CPUS")" -gt 1 ] &&
  info "every online CPU is a shard core: interrupts, the kernel and any load generator share them"

echo
echo "Frequency and idle states (shard cores)"
gov_seen=0
for c in $SHARD_CPUS; do
  g=$(read_sys "/sys/devices/system/cpu/cpu$c/cpufreq/scaling_governor")
  [ -z "$g" ] && continue
  gov_seen=1
  if [ "$g" = performance ]; then ok "cpu$c governor performance"; else warn "cpu$c governor $g: cpupower frequency-set -g performance"; fi
done
[ $gov_seen = 0 ] && info "no cpufreq in /sys (VM or fixed frequency): governor not settable here"
maxc=$(read_sys /sys/module/intel_idle/parameters/max_cstate)
states=$(ls -d /sys/devices/system/cpu/cpu"$(awk '{print $1}' <<<"$SHARD_CPUS")"/cpuidle/state* 2>/dev/null | wc -l)
if [ "$states" -gt 0 ]; then
  deepest=$(read_sys "$(ls -d /sys/devices/system/cpu/cpu"$(awk '{print $1}' <<<"$SHARD_CPUS")"/cpuidle/state* | tail -1)/name")
  lat=$(read_sys "$(ls -d /sys/devices/system/cpu/cpu"$(awk '{print $1}' <<<"$SHARD_CPUS")"/cpuidle/state* | tail -1)/latency")
  if [ -n "$lat" ] && [ "$lat" -gt 10 ]; then
    warn "deepest idle state $deepest has $lat us exit latency${maxc:+ (intel_idle.max_cstate=$maxc)}: limit C-states or use --spin-before-park"
  else
    ok "deepest idle state $deepest, exit latency ${lat:-?} us"
  fi
else
  info "no cpuidle states visible (VM or idle=poll)"
fi
nt=$(read_sys /sys/devices/system/cpu/intel_pstate/no_turbo)
[ -n "$nt" ] && info "turbo $([ "$nt" = 1 ] && echo off || echo on) (off gives repeatable benchmarks, on gives the most throughput)"

echo
echo "Interrupts"
if pgrep -x irqbalance >/dev/null 2>&1; then
  banned=$(grep -s '^IRQBALANCE_BANNED_CPULIST' /etc/default/irqbalance /etc/sysconfig/irqbalance | head -1)
  if [ -n "$banned" ]; then info "irqbalance running with $banned"; else warn "irqbalance is running without IRQBALANCE_BANNED_CPULIST: it may move IRQs onto shard cores"; fi
else
  ok "irqbalance not running"
fi
on_shard=0
checked=0
for d in /proc/irq/[0-9]*; do
  [ -r "$d/smp_affinity_list" ] || continue
  # only IRQs that have fired on some CPU are worth reporting
  irq=${d##*/}
  grep -q "^ *$irq:" /proc/interrupts 2>/dev/null || continue
  checked=$((checked + 1))
  aff=$(expand_list "$(cat "$d/smp_affinity_list" 2>/dev/null)")
  for c in $SHARD_CPUS; do
    if grep -qw "$c" <<<"$aff"; then
      nic=$(grep "^ *$irq:" /proc/interrupts | awk '{print $NF}')
      case "$nic" in
        *eth*|en[opsx]*|*-en[opsx]*|*mlx*|*virtio*-input*|*ixgbe*|*i40e*|*ice*|*bnxt*) on_shard=$((on_shard + 1)); [ $on_shard -le 5 ] && warn "IRQ $irq ($nic) may run on shard CPU $c: echo <other cpus> > /proc/irq/$irq/smp_affinity_list" ;;
      esac
      break
    fi
  done
done
[ $checked = 0 ] && info "IRQ affinities not readable here"
[ $on_shard -gt 5 ] && warn "... and $((on_shard - 5)) more NIC IRQs on shard cores"
[ $checked -gt 0 ] && [ $on_shard = 0 ] && ok "no NIC IRQ is allowed on a shard core"
for q in /sys/class/net/*/queues/rx-*/rps_cpus; do
  [ -r "$q" ] || continue
  nic=$(cut -d/ -f5 <<<"$q"); [ "$nic" = lo ] && continue
  v=$(tr -d ',0' <"$q")
  if [ -z "$v" ]; then info "$nic ${q##*/queues/} RPS off (fine with multi-queue RSS; set rps_cpus to non-shard cores for a single-queue NIC)"; else info "$nic ${q##*/queues/} RPS on: $(cat "$q")"; fi
done

echo
echo "Network stack"
sysctl_min() { # name min why
  local v; v=$(read_sys "/proc/sys/${1//.//}")
  if [ -z "$v" ]; then info "$1 not visible here"; return; fi
  if [ "$v" -ge "$2" ]; then ok "$1 = $v"; else warn "$1 = $v < $2: $3"; fi
}
sysctl_min net.core.somaxconn 4096 "caps each shard's listen backlog (1024 asked); sysctl -w net.core.somaxconn=4096"
sysctl_min net.ipv4.tcp_max_syn_backlog 8192 "half-open connections dropped under connection storms"
sysctl_min net.core.netdev_max_backlog 16384 "packets dropped between NIC and stack under bursts"
range=$(read_sys /proc/sys/net/ipv4/ip_local_port_range)
if [ -n "$range" ]; then
  lo=$(awk '{print $1}' <<<"$range"); hi=$(awk '{print $2}' <<<"$range")
  if [ $((hi - lo)) -ge 60000 ]; then ok "ip_local_port_range = $lo-$hi"; else info "ip_local_port_range = $lo-$hi ($((hi - lo + 1)) ports per destination for clients on this host; 1024 65535 for load generators)"; fi
fi

echo
echo "Memory"
thp=$(read_sys /sys/kernel/mm/transparent_hugepage/enabled)
thpd=$(read_sys /sys/kernel/mm/transparent_hugepage/defrag)
if [ -n "$thp" ]; then
  case "$thp" in
    *"[always]"*) warn "transparent_hugepage/enabled = always: compaction stalls; use madvise" ;;
    *) ok "transparent_hugepage/enabled: $thp" ;;
  esac
  case "$thpd" in
    *"[always]"*) warn "transparent_hugepage/defrag = always: direct compaction stalls allocating threads; use madvise or defer" ;;
    *) ok "transparent_hugepage/defrag: $thpd" ;;
  esac
else
  info "transparent huge pages not visible here"
fi

echo
echo "NUMA"
nodes=$(ls -d /sys/devices/system/node/node[0-9]* 2>/dev/null | wc -l)
if [ "$nodes" -le 1 ]; then
  ok "one NUMA node"
else
  used=
  for c in $SHARD_CPUS; do
    n=$(ls -d /sys/devices/system/cpu/cpu"$c"/node[0-9]* 2>/dev/null | head -1)
    used+="${n##*node} "
  done
  distinct=$(tr ' ' '\n' <<<"$used" | sort -u | grep -c .)
  if [ "$distinct" -le 1 ]; then ok "$nodes NUMA nodes; all shard cores on node $(awk '{print $1}' <<<"$used")"
  else warn "shard cores span $distinct NUMA nodes ($used): mesh hops between them cross nodes; prefer one node's cores"; fi
fi

echo
if [ $WARNS = 0 ]; then echo "nothing to change"; else echo "$WARNS setting(s) worth changing: see tuning/README.md"; fi
exit 0
