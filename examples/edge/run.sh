#!/usr/bin/env bash
# Three thermostats, each a separate device process acting in its own room (examples/edge/thermostat.py,
# loaded from the device's folder), learn one heating policy through a TLS gRPC server. The devices act
# all the time; each round they learn from what they did, and the deployed version is swapped in between
# two control steps. When the run ends they keep acting with the last version.
#   examples/edge/run.sh [OUT_DIR]          (needs `make setup` first; about a minute)
set -euo pipefail
cd "$(dirname "$0")/../.."
BIN=.venv/bin
OUT=${1:-runs/thermostats-$(date -u +%Y%m%d-%H%M%S)}
PORT=${PORT:-50061}
mkdir -p "$OUT/logs"
ROOMS=('{"loss_per_h": 0.12}' '{"loss_per_h": 0.2, "heater_kw": 3.0, "heater_c_per_h": 5.0}' '{"outside_mean_c": -5.0, "loss_per_h": 0.08}')

"$BIN/fedrl" certs "$OUT/pki" >/dev/null
for i in 0 1 2; do
  "$BIN/fedrl" fleet add-client "room$i" --state-dir "$OUT/server" --token-file "$OUT/room$i.token" >/dev/null
done

"$BIN/fedrl" server --config examples/edge/server.yaml --state-dir "$OUT/server" \
  --listen "127.0.0.1:$PORT" --metrics 127.0.0.1:0 \
  --tls-cert "$OUT/pki/server.pem" --tls-key "$OUT/pki/server.key" --exit-when-finished \
  2>"$OUT/logs/server.jsonl" &
SERVER=$!
DEVICES=""
trap 'kill $SERVER $DEVICES 2>/dev/null || true' EXIT

for i in 0 1 2; do
  OMP_NUM_THREADS=1 "$BIN/fedrl" client --server "127.0.0.1:$PORT" --ca "$OUT/pki/ca.pem" \
    --name "room$i" --token-file "$OUT/room$i.token" --client-index "$i" \
    --env thermostat:make_env --env-dir examples/edge --env-kwargs "${ROOMS[$i]}" \
    --state-dir "$OUT/room$i" 2>"$OUT/logs/room$i.jsonl" &
  DEVICES="$DEVICES $!"
done

echo "server and 3 thermostats running; logs in $OUT/logs"
wait $SERVER
sleep 3  # the devices act on with the final version
kill -TERM $DEVICES && wait $DEVICES || true
"$BIN/fedrl" fleet status --state-dir "$OUT/server" --rounds 5
"$BIN/python" examples/edge/compare.py "$OUT/server" "${ROOMS[@]}"
