#!/usr/bin/env bash
# A whole deployment on one machine: a TLS gRPC server and five edge agents, each a separate
# process training its own CartPole, until the deployed policy reaches the target return.
#   examples/deploy/local_fleet.sh [OUT_DIR]      (needs `make setup` first; about a minute)
# Afterwards: `fedrl fleet status --state-dir OUT_DIR/server` and the logs in OUT_DIR/logs/.
set -euo pipefail
cd "$(dirname "$0")/../.."
BIN=.venv/bin
OUT=${1:-runs/local-fleet-$(date -u +%Y%m%d-%H%M%S)}
PORT=${PORT:-50051}
mkdir -p "$OUT/logs"

"$BIN/fedrl" certs "$OUT/pki" >/dev/null
for i in 0 1 2 3 4; do
  "$BIN/fedrl" fleet add-client "dev$i" --state-dir "$OUT/server" --token-file "$OUT/dev$i.token" >/dev/null
done

"$BIN/fedrl" server --config examples/deploy/server.yaml --state-dir "$OUT/server" \
  --listen "127.0.0.1:$PORT" --metrics 127.0.0.1:0 \
  --tls-cert "$OUT/pki/server.pem" --tls-key "$OUT/pki/server.key" --exit-when-finished \
  2>"$OUT/logs/server.jsonl" &
SERVER=$!
trap 'kill $SERVER ${CLIENTS:-} 2>/dev/null || true' EXIT

CLIENTS=""
for i in 0 1 2 3 4; do
  OMP_NUM_THREADS=1 "$BIN/fedrl" client --server "127.0.0.1:$PORT" --ca "$OUT/pki/ca.pem" \
    --name "dev$i" --token-file "$OUT/dev$i.token" --client-index "$i" --env cartpole \
    --until-finished --state-dir "$OUT/dev$i" 2>"$OUT/logs/dev$i.jsonl" &
  CLIENTS="$CLIENTS $!"
done

echo "server and 5 clients running; logs in $OUT/logs (Ctrl-C stops them)"
wait $SERVER
wait $CLIENTS
"$BIN/fedrl" fleet status --state-dir "$OUT/server" --rounds 5
