#!/bin/sh
# powerplane PrologSlurmctld: register a job's power group when Slurm allocates it.
#
# Writes $POWERPLANE_SPOOL/<job id>.json atomically (tmp file + mv), and POSTs the same
# JSON to $POWERPLANE_JOBS_URL if set. Never fails the job: every problem is logged to
# stderr (slurmctld's log) and the script exits 0. See README.md in this directory.
#
#   {"v":1,"event":"start","job":"4242","nodes":"node-[000-003]","partition":"gpu",
#    "priority":2,"user":"alice","ts":1777636800}

PATH=/usr/bin:/bin
SPOOL=${POWERPLANE_SPOOL:-/var/spool/powerplane/jobs}
DEFAULT_PRIORITY=${POWERPLANE_DEFAULT_PRIORITY:-1}
# "partition=priority" pairs, e.g. "gpu-high=3 gpu=2 debug=0"
PARTITION_PRIORITY=${POWERPLANE_PARTITION_PRIORITY:-}

job=${SLURM_JOB_ID:-}
if [ -z "$job" ]; then
    echo "powerplane prolog: SLURM_JOB_ID not set; nothing registered" >&2
    exit 0
fi
case "$job" in
    *[!0-9_a-zA-Z.-]*)
        echo "powerplane prolog: refusing odd job id '$job'" >&2
        exit 0
        ;;
esac

# JSON string escaping for the few free-text fields (backslash and double quote).
json_str() {
    printf '%s' "$1" | sed -e 's/\\/\\\\/g' -e 's/"/\\"/g' | tr -d '\n\r\t'
}

# Priority, first match wins: "powerplane:priority=N" in the job comment, a feature
# "powerplane-priority-N" in the constraints, the partition map, the default.
priority=""
case "${SLURM_JOB_COMMENT:-}" in
    *powerplane:priority=*)
        priority=$(printf '%s' "$SLURM_JOB_COMMENT" | sed -n 's/.*powerplane:priority=\([0-9][0-9]*\).*/\1/p')
        ;;
esac
if [ -z "$priority" ]; then
    priority=$(printf '%s' "${SLURM_JOB_CONSTRAINTS:-}" | sed -n 's/.*powerplane-priority-\([0-9][0-9]*\).*/\1/p')
fi
if [ -z "$priority" ] && [ -n "${SLURM_JOB_PARTITION:-}" ]; then
    for pair in $PARTITION_PRIORITY; do
        if [ "${pair%%=*}" = "$SLURM_JOB_PARTITION" ]; then
            priority=${pair#*=}
        fi
    done
fi
case "$priority" in
    ''|*[!0-9]*) priority=$DEFAULT_PRIORITY ;;
esac

doc=$(printf '{"v":1,"event":"start","job":"%s","nodes":"%s","partition":"%s","priority":%s,"user":"%s","ts":%s}' \
    "$(json_str "$job")" "$(json_str "${SLURM_JOB_NODELIST:-}")" "$(json_str "${SLURM_JOB_PARTITION:-}")" \
    "$priority" "$(json_str "${SLURM_JOB_USER:-}")" "$(date +%s)")

if mkdir -p "$SPOOL" 2>/dev/null; then
    tmp="$SPOOL/.$job.json.$$"
    if printf '%s\n' "$doc" > "$tmp" && mv "$tmp" "$SPOOL/$job.json"; then
        :
    else
        rm -f "$tmp"
        echo "powerplane prolog: job $job: cannot write $SPOOL/$job.json" >&2
    fi
else
    echo "powerplane prolog: job $job: cannot create spool $SPOOL" >&2
fi

if [ -n "${POWERPLANE_JOBS_URL:-}" ]; then
    curl -fsS --max-time 5 -H 'Content-Type: application/json' --data "$doc" "$POWERPLANE_JOBS_URL" >/dev/null \
        || echo "powerplane prolog: job $job: POST to $POWERPLANE_JOBS_URL failed" >&2
fi
exit 0
