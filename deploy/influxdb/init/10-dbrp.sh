#!/bin/sh
# Runs once, after the influxdb:2 image's initial set-up: map the InfluxQL database
# "powerplane" (retention policy "autogen") onto the bucket, so Grafana's InfluxQL panels
# and alerts read it. InfluxDB 2.x also creates virtual DBRP mappings for buckets; the
# explicit one makes the mapping visible (`influx v1 dbrp list`) and survive bucket renames.
set -eu
bucket_id=$(influx bucket list --name "${DOCKER_INFLUXDB_INIT_BUCKET}" --hide-headers | cut -f1)
influx v1 dbrp create --db "${DOCKER_INFLUXDB_INIT_BUCKET}" --rp autogen --bucket-id "${bucket_id}" --default
