#!/bin/sh
# Where loading one module spends its time, measured in a pinstorm lab guest: an untraced
# insmod (its dependencies loaded first), then one traced with function_graph (load_module and the functions it calls),
# with the module's ftrace records and kallsyms symbols, the two factors of
# ftrace_module_enable's per-record symbol lookup (docs/findings.md).
#
# It unloads the module first, so it runs only as a lab guest's --guest-exec, after the
# scenario (which unmounted what it mounted):
#
#   pinstorm lab --kernels deb:sid --guest-exec "sh $PWD/scripts/module-load-trace.sh btrfs" quick
#
# (not xfs there: --guest-exec gets the whole set-up, whose xfs DAX mount keeps xfs in use)
#
# The report is the guest-exec.log beside the kernel's result.
set -u
m=${1:-}
case $m in
'' | *[!a-z0-9_-]*)
    echo "usage: module-load-trace.sh MODULE (a module name: a-z, 0-9, _ and -)" >&2
    exit 2
    ;;
esac
if [ -z "${PINSTORM_LAB_WORK:-}" ]; then
    echo "module-load-trace: runs only in a pinstorm lab guest (--guest-exec): it unloads $m" >&2
    exit 2
fi
T=/sys/kernel/tracing
if [ ! -e $T/current_tracer ]; then
    mount -t tracefs tracefs $T || exit 1
fi
up() { cut -d' ' -f1 /proc/uptime; }
loaded() { grep -q "^$(echo "$m" | tr - _) " /proc/modules; }
since() { awk -v a="$1" -v b="$(up)" 'BEGIN { printf "%.2f s", b - a }'; }

rmmod "$m" 2>/dev/null
if loaded; then
    echo "module-load-trace: $m is in use, not unloaded" >&2
    exit 1
fi
# Its dependencies first, untimed: what is timed and traced is the module's own load.
file=$(modprobe -D "$m" | awk '$1 == "insmod" { f = $2 } END { print f }')
if [ -z "$file" ]; then
    echo "module-load-trace: modprobe -D $m names no file (built in?)" >&2
    exit 1
fi
modprobe -D "$m" | awk -v f="$file" '$1 == "insmod" && $2 != f { print $2 }' |
    while read -r d; do insmod "$d" 2>/dev/null; done
a=$(up)
insmod "$file" || exit 1
echo "$m: insmod $file, untraced: $(since "$a")"
mod=$(echo "$m" | tr - _)
echo "$m: ftrace records: $(grep -c "\[$mod\]" $T/available_filter_functions)"
echo "$m: kallsyms symbols: $(grep -c "\[$mod\]" /proc/kallsyms)"
rmmod "$m" || exit 1

restore() {
    echo nop > $T/current_tracer
    echo > $T/set_graph_function
    echo 0 > $T/max_graph_depth
    echo 1 > $T/tracing_on
}
trap restore EXIT
echo > $T/trace
echo load_module > $T/set_graph_function
echo 2 > $T/max_graph_depth
echo function_graph > $T/current_tracer
a=$(up)
insmod "$file"
echo 0 > $T/tracing_on
echo "$m: insmod, traced: $(since "$a")"
awk 'match($0, /[0-9]+(\.[0-9]+)? us/) && /load_module/ { t = substr($0, RSTART, RLENGTH - 3) }
    END { printf "load_module, traced: %.0f ms; below it, by total time:\n", t / 1000 }' $T/trace
# Each line below load_module: " CPU) [marker] DURATION us | name();" (a leaf at depth 2),
# or the closing "} /* name */" of one with children. Sum the durations per name.
awk '
    match($0, /[0-9]+(\.[0-9]+)? us/) {
        us = substr($0, RSTART, RLENGTH - 3)
        name = $0
        sub(/.*\| */, "", name)
        sub(/^} \/\* /, "", name)
        sub(/ \*\/$/, "", name)
        sub(/\(\);$/, "", name)
        if (name == "load_module") next
        n[name]++
        s[name] += us
    }
    END { for (f in s) printf "  %-40s %6d calls %9.0f ms\n", f, n[f], s[f] / 1000 }
' $T/trace | sort -k4 -n -r | head -12
