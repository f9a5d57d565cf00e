#!/bin/sh
# powerplane PrologSlurmctld: register a job with the power controller when Slurm allocates it.
#
# Writes $POWERPLANE_SPOOL/<job id>.json atomically (tmp file + mv), which the controller reads
# (`powerplane controller --jobs-spool DIR`), and POSTs the same JSON to $POWERPLANE_JOBS_URL if
# set (`--jobs-listen`), with the bearer token of $POWERPLANE_JOBS_TOKEN_FILE. Never fails the
# job: every problem is logged to stderr (slurmctld's log) and the script exits 0. See README.md.
#
#   {"v":2,"event":"start","job":"4242","nodes":"r01-node-[000-003]","partition":"gpu",
#    "qos":"high","account":"llm","user":"alice","ts":1777636800}
#
# The controller gives the job its priority from the site file's [scheduler] rules (partition,
# QOS, account). A job may ask for a *lower* priority (a higher number) with
# `--comment powerplane:priority=N` or the feature `powerplane-priority-N`, and say whether it
# checkpoints with `--comment powerplane:checkpointable=yes|no`.

# slurmctld's PATH (where scontrol is), else the system's.
PATH=${PATH:-/usr/bin:/bin}
SPOOL=${POWERPLANE_SPOOL:-/var/spool/powerplane/jobs}

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

# QOS (and the account, if slurmctld did not set it) from `scontrol show job -o`: the prolog's
# environment does not carry the QOS.
qos=""
account=${SLURM_JOB_ACCOUNT:-}
if info=$(scontrol show job -o "$job" 2>/dev/null); then
    qos=$(printf '%s\n' "$info" | sed -n 's/.*[[:space:]]QOS=\([^[:space:]]*\).*/\1/p')
    if [ -z "$account" ]; then
        account=$(printf '%s\n' "$info" | sed -n 's/.*[[:space:]]Account=\([^[:space:]]*\).*/\1/p')
    fi
else
    echo "powerplane prolog: job $job: scontrol show job failed; registering without QOS" >&2
fi
case "$qos" in (null|"(null)") qos="" ;; esac

# What the job asks for itself: a priority (the controller lets it only lower its own) and
# whether it checkpoints.
extra=""
priority=""
case "${SLURM_JOB_COMMENT:-}" in
    *powerplane:priority=*)
        priority=$(printf '%s' "$SLURM_JOB_COMMENT" | sed -n 's/.*powerplane:priority=\([0-9][0-9]*\).*/\1/p')
        ;;
esac
if [ -z "$priority" ]; then
    priority=$(printf '%s' "${SLURM_JOB_CONSTRAINTS:-}" | sed -n 's/.*powerplane-priority-\([0-9][0-9]*\).*/\1/p')
fi
case "$priority" in
    ''|*[!0-9]*) ;;
    *) extra="$extra,\"priority\":$priority" ;;
esac
case "${SLURM_JOB_COMMENT:-}" in
    *powerplane:checkpointable=yes*|*powerplane:checkpointable=true*) extra="$extra,\"checkpointable\":true" ;;
    *powerplane:checkpointable=no*|*powerplane:checkpointable=false*) extra="$extra,\"checkpointable\":false" ;;
esac

doc=$(printf '{"v":2,"event":"start","job":"%s","nodes":"%s","partition":"%s","qos":"%s","account":"%s","user":"%s"%s,"ts":%s}' \
    "$(json_str "$job")" "$(json_str "${SLURM_JOB_NODELIST:-}")" "$(json_str "${SLURM_JOB_PARTITION:-}")" \
    "$(json_str "$qos")" "$(json_str "$account")" "$(json_str "${SLURM_JOB_USER:-}")" "$extra" "$(date +%s)")

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
    # The token goes to curl on stdin (-K -), never on its command line (every user can read argv).
    token=""
    if [ -n "${POWERPLANE_JOBS_TOKEN_FILE:-}" ]; then
        token=$(cat "$POWERPLANE_JOBS_TOKEN_FILE" 2>/dev/null) \
            || echo "powerplane prolog: job $job: cannot read $POWERPLANE_JOBS_TOKEN_FILE" >&2
    fi
    printf 'header = "Authorization: Bearer %s"\n' "$token" \
        | curl -fsS --max-time 5 -K - -H 'Content-Type: application/json' --data "$doc" "$POWERPLANE_JOBS_URL" \
            >/dev/null \
        || echo "powerplane prolog: job $job: POST to $POWERPLANE_JOBS_URL failed" >&2
fi
exit 0
