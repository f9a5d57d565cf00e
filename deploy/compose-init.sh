#!/bin/sh
# First start of the compose demo (service "init" of deploy/compose.yaml): generate every
# secret once -- nothing secret is shipped -- and the broker's runtime configuration.
# Idempotent: a secret that exists is kept; the broker's password file is rebuilt from the
# account passwords at every start, so an account added to the ACL only needs `up` again.
#
#   /deploy            deploy/mosquitto (read-only): mosquitto.conf, acl, acl.twin
#   /secrets           one directory per MQTT account (0500, owned by the uid its service runs as),
#                      holding 0400 files: mqtt.password; site.key (controllers and agents);
#                      influx-token (controllers). .master/ (root, 0700) keeps the originals.
#   /secrets-influxdb  admin-password, admin-token (InfluxDB's uid)
#   /secrets-grafana   admin-password, influx-token (Grafana's uid)
#   /broker            mosquitto's configuration: mosquitto.conf, acl, acl.twin, passwd (mosquitto's uid)
#   /state             one 0700 directory per agent: its last applied (epoch, seq)
#   /twin-run          the twin's endpoints.json; /controller-data the controller's state and spool
#   /account-data      (profile scaleout) one 0700 directory per further controller and per store writer:
#                      its state and spool, owned by its account's uid
#
# ACCOUNT_UIDS ("account=uid ...") names the uid that runs each account's service, so one
# container can read only its own secrets. An account without one (operator) stays root's:
#   docker compose -f deploy/compose.yaml run --rm --entrypoint cat init /secrets/operator/mqtt.password
set -eu
umask 077
DEPLOY=${DEPLOY:-/deploy}
SECRETS=${SECRETS:-/secrets}
SECRETS_INFLUXDB=${SECRETS_INFLUXDB:-/secrets-influxdb}
SECRETS_GRAFANA=${SECRETS_GRAFANA:-/secrets-grafana}
BROKER=${BROKER:-/broker}
STATE=${STATE:-/state}
TWIN_RUN=${TWIN_RUN:-/twin-run}
CONTROLLER_DATA=${CONTROLLER_DATA:-/controller-data}
ACCOUNT_DATA=${ACCOUNT_DATA:-/account-data}
MOSQUITTO_UID=${MOSQUITTO_UID:-1883}
INFLUXDB_UID=${INFLUXDB_UID:-1000}
GRAFANA_UID=${GRAFANA_UID:-472}
TWIN_UID=${TWIN_UID:-10002}

# 32 random bytes as 64 hex digits (a site key, a password, a token).
random_hex() { head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n'; }

# keep FILE: create it with a fresh secret unless it already holds one.
keep() { [ -s "$1" ] || { random_hex > "$1.tmp" && mv "$1.tmp" "$1"; }; }

# place SRC UID DEST: copy a secret into a service's directory, both owned by UID (dir 0500, file 0400).
place() {
  d=$(dirname "$3")
  mkdir -p "$d"
  cp "$1" "$3.tmp" && mv "$3.tmp" "$3"
  chown "$2:$2" "$3" "$d"
  chmod 0400 "$3"
  chmod 0500 "$d"
}

# uid_of ACCOUNT: its uid in ACCOUNT_UIDS, else 0.
uid_of() {
  for pair in ${ACCOUNT_UIDS:-}; do
    if [ "${pair%%=*}" = "$1" ]; then echo "${pair#*=}"; return; fi
  done
  echo 0
}

mkdir -p "$SECRETS/.master" "$SECRETS_INFLUXDB" "$SECRETS_GRAFANA" "$BROKER" "$STATE" "$TWIN_RUN" "$CONTROLLER_DATA" \
  "$ACCOUNT_DATA"
chmod 0755 "$SECRETS" "$STATE"
chmod 0700 "$SECRETS/.master"
M="$SECRETS/.master"
for s in site.key influx-token influx-admin-password grafana-admin-password; do keep "$M/$s"; done

# Accounts and their roles, read from the generated ACL: a block that reads or writes a caps topic
# is a controller or an agent (they need the site key); one that writes caps/+ is a controller.
accounts=$(sed -n 's/^user //p' "$DEPLOY/acl")
signers=$(awk '/^user /{u=$2} /^topic (read|write) .*\/caps\//{print u}' "$DEPLOY/acl" | sort -u)
controllers=$(awk '/^user /{u=$2} /^topic write .*\/caps\/\+$/{print u}' "$DEPLOY/acl" | sort -u)
agents=$(awk '/^user /{u=$2} /^topic read .*\/caps\/[^+]*$/{print u}' "$DEPLOY/acl" | sort -u)
# Store writers read every collector's batches and write nothing; controllers read them too.
writers=$(awk '/^user /{u=$2; w[u]=0} /^topic write /{w[u]=1} /^topic read .*\/readings\/\+$/{r[u]=1}
               END {for (u in r) if (!w[u]) print u}' "$DEPLOY/acl" | sort -u)

: > "$BROKER/passwd.new"
for a in $accounts; do
  keep "$M/mqtt-$a.password"
  uid=$(uid_of "$a")
  place "$M/mqtt-$a.password" "$uid" "$SECRETS/$a/mqtt.password"
  printf '%s:%s\n' "$a" "$(cat "$M/mqtt-$a.password")" >> "$BROKER/passwd.new"
done
for a in $signers; do place "$M/site.key" "$(uid_of "$a")" "$SECRETS/$a/site.key"; done
for a in $controllers $writers; do place "$M/influx-token" "$(uid_of "$a")" "$SECRETS/$a/influx-token"; done
for a in $agents; do
  mkdir -p "$STATE/$a"
  chown "$(uid_of "$a"):$(uid_of "$a")" "$STATE/$a"
  chmod 0700 "$STATE/$a"
done

place "$M/influx-admin-password" "$INFLUXDB_UID" "$SECRETS_INFLUXDB/admin-password"
place "$M/influx-token" "$INFLUXDB_UID" "$SECRETS_INFLUXDB/admin-token"
place "$M/grafana-admin-password" "$GRAFANA_UID" "$SECRETS_GRAFANA/admin-password"
place "$M/influx-token" "$GRAFANA_UID" "$SECRETS_GRAFANA/influx-token"

# The broker: the shipped configuration with its listeners on the compose network (the compose
# file publishes only 1883, and only on loopback unless POWERPLANE_BIND says otherwise).
sed -e 's/^listener \([0-9][0-9]*\) 127\.0\.0\.1$/listener \1/' "$DEPLOY/mosquitto.conf" > "$BROKER/mosquitto.conf.new"
mosquitto_passwd -U "$BROKER/passwd.new"
cp "$DEPLOY/acl" "$BROKER/acl.new"
cp "$DEPLOY/acl.twin" "$BROKER/acl.twin.new"
for f in mosquitto.conf passwd acl acl.twin; do mv "$BROKER/$f.new" "$BROKER/$f"; done
chown "$MOSQUITTO_UID:$MOSQUITTO_UID" "$BROKER" "$BROKER/mosquitto.conf" "$BROKER/passwd" "$BROKER/acl" "$BROKER/acl.twin"
chmod 0700 "$BROKER"
chmod 0600 "$BROKER/mosquitto.conf" "$BROKER/passwd" "$BROKER/acl" "$BROKER/acl.twin"

chown "$TWIN_UID:$TWIN_UID" "$TWIN_RUN"
chmod 0755 "$TWIN_RUN"
# /controller-data belongs to the single-box controller (account "controller"); the scaleout
# profile's controllers and the store writers each get their own directory under /account-data.
chown "$(uid_of controller):$(uid_of controller)" "$CONTROLLER_DATA"
chmod 0700 "$CONTROLLER_DATA"
chmod 0755 "$ACCOUNT_DATA"
for a in $controllers $writers; do
  [ "$a" = controller ] && continue
  mkdir -p "$ACCOUNT_DATA/$a"
  chown "$(uid_of "$a"):$(uid_of "$a")" "$ACCOUNT_DATA/$a"
  chmod 0700 "$ACCOUNT_DATA/$a"
done
echo "init: $(echo "$accounts" | wc -w) MQTT accounts; secrets in place"
