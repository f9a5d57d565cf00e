#!/bin/sh
# powerplane EpilogSlurmctld: unregister a job when it ends, so that its power goes back to the pool.
#
# Removes $POWERPLANE_SPOOL/<job id>.json, and POSTs {"v":2,"event":"end","job":...} to
# $POWERPLANE_JOBS_URL if set (bearer token from $POWERPLANE_JOBS_TOKEN_FILE). Never fails the
# job (exit 0). See README.md here.

PATH=${PATH:-/usr/bin:/bin}
SPOOL=${POWERPLANE_SPOOL:-/var/spool/powerplane/jobs}

job=${SLURM_JOB_ID:-}
if [ -z "$job" ]; then
    echo "powerplane epilog: SLURM_JOB_ID not set; nothing unregistered" >&2
    exit 0
fi
case "$job" in
    *[!0-9_a-zA-Z.-]*)
        echo "powerplane epilog: refusing odd job id '$job'" >&2
        exit 0
        ;;
esac

rm -f "$SPOOL/$job.json" || echo "powerplane epilog: job $job: cannot remove $SPOOL/$job.json" >&2

if [ -n "${POWERPLANE_JOBS_URL:-}" ]; then
    doc=$(printf '{"v":2,"event":"end","job":"%s","ts":%s}' "$job" "$(date +%s)")
    token=""
    if [ -n "${POWERPLANE_JOBS_TOKEN_FILE:-}" ]; then
        token=$(cat "$POWERPLANE_JOBS_TOKEN_FILE" 2>/dev/null) \
            || echo "powerplane epilog: job $job: cannot read $POWERPLANE_JOBS_TOKEN_FILE" >&2
    fi
    printf 'header = "Authorization: Bearer %s"\n' "$token" \
        | curl -fsS --max-time 5 -K - -H 'Content-Type: application/json' --data "$doc" "$POWERPLANE_JOBS_URL" \
            >/dev/null \
        || echo "powerplane epilog: job $job: POST to $POWERPLANE_JOBS_URL failed" >&2
fi
exit 0
