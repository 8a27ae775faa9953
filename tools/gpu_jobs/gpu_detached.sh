#!/usr/bin/env bash
# One long job on a device machine across several device calls, without stopping it in between.
#
# A device call lasts at most 10 minutes and the machine stays warm for 30 s after it; a job that
# stops at the end of each call and resumes in the next (tools/gpu_jobs/gpu_all.sh alone) pays its
# start, restore and compilation again every time. Here the job runs in its own process session
# (setsid), which the device tool leaves running between calls while the machine is warm, and each
# call only waits for it and reports:
#
#   bash tools/gpu_jobs/gpu_detached.sh start NAME CMD...  # starts CMD (once: a second start of a
#                                                      # NAME that is running or done is refused)
#   bash tools/gpu_jobs/gpu_detached.sh wait NAME SECONDS  # until CMD has ended or SECONDS passed;
#                                                      # prints the log's new lines, exits 0 once
#                                                      # CMD has ended (with its status), 3 if it
#                                                      # is still running
#   bash tools/gpu_jobs/gpu_detached.sh stop NAME          # SIGINT to CMD's process group
#
# The log is $DETACHED/NAME.log (default DETACHED=runs/detached); CMD's exit status lands in
# $DETACHED/NAME.rc. If the machine is given back between calls, everything on it is lost: the
# next call's `start` begins again (with gpu_all.sh, from nothing).
set -euo pipefail
cd "$(dirname "$0")/../.."
DETACHED=${DETACHED:-runs/detached}
mkdir -p "$DETACHED"
verb=${1:?usage: gpu_detached.sh start|wait|stop NAME ...}
name=${2:?usage: gpu_detached.sh $verb NAME ...}
[[ $name =~ ^[A-Za-z0-9_.-]+$ ]] || { echo "NAME '$name': letters, digits, . _ - only" >&2; exit 2; }
log=$DETACHED/$name.log; rc=$DETACHED/$name.rc; pid=$DETACHED/$name.pid; seen=$DETACHED/$name.seen
running() { [[ -f $pid ]] && kill -0 "$(cat "$pid")" 2>/dev/null; }
case $verb in
  start)
    shift 2
    (( $# )) || { echo "start $name: no command given" >&2; exit 2; }
    if [[ -f $rc ]]; then echo "start $name: already done (exit $(cat "$rc"))" >&2; exit 2; fi
    if running; then echo "start $name: already running (pid $(cat "$pid"))" >&2; exit 2; fi
    # setsid: a new process session, so that the device tool does not end it with the call; no
    # stream of the caller's stays open in it (a caller that reads them to the end returns).
    setsid bash -c 'echo $$ > "$1"; shift; st=0; "${@:3}" > "$1" 2>&1 < /dev/null || st=$?
                    echo $st > "$2"' _ "$pid" "$log" "$rc" "$@" > /dev/null 2>&1 < /dev/null &
    for _ in $(seq 50); do [[ -s $pid ]] && break; sleep 0.1; done
    echo 0 > "$seen"
    echo "started $name (pid $(cat "$pid")): $*; log $log"
    ;;
  wait)
    secs=${3:?usage: gpu_detached.sh wait NAME SECONDS}
    [[ -f $pid || -f $rc ]] || { echo "wait $name: never started here (a fresh machine?)" >&2; exit 2; }
    end=$(( $(date +%s) + secs ))
    while [[ ! -f $rc ]] && running && (( $(date +%s) < end )); do sleep 2; done
    n=$(cat "$seen" 2>/dev/null || echo 0)
    tail -n +"$(( n + 1 ))" "$log" 2>/dev/null || true
    wc -l < "$log" > "$seen"
    if [[ -f $rc ]]; then echo "== $name ended: exit $(cat "$rc")"; exit 0; fi
    if ! running; then echo "== $name is gone without an exit status" >&2; exit 2; fi
    echo "== $name still running"; exit 3
    ;;
  stop)
    running || { echo "stop $name: not running" >&2; exit 2; }
    kill -INT -- "-$(cat "$pid")" && echo "SIGINT to $name's process group"
    ;;
  *) echo "unknown verb '$verb' (start, wait, stop)" >&2; exit 2;;
esac
