"""The ceiling for benchmarks/load.py: a bare grpcio server that speaks the shape of ``fedrl.v1.Federation``.

Same server type as ``fedrl server`` (grpcio's synchronous server, one thread per call, the same
channel options), same method names, so the load generator runs unchanged against it. It does no
work: Register and Heartbeat answer fixed bytes, GetTask answers one fixed task, and PushUpdate
reads the upload's messages as raw bytes (no parsing, no hashing, no disk) and answers a fixed
``Ack``. What fedrl does on top of this is its own cost.

    python benchmarks/_echo_server.py --workers 2048 --info echo.json   # writes {"pid", "port"}, serves until SIGTERM
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import threading
from concurrent import futures
from pathlib import Path

import grpc

from fedrl.wire import fedrl_pb2 as pb

SERVICE = "fedrl.v1.Federation"
REGISTRATION = pb.Registration(client="echo", deployed_version=0, heartbeat_s=5.0).SerializeToString()
HEARTBEAT = pb.HeartbeatReply(deployed_version=0).SerializeToString()
TASK = pb.TaskPart(header=pb.TaskHeader(train=pb.Train(round=1, base_version=0, deadline_s=60.0))).SerializeToString()
ACK = pb.Ack(update_id="echo", round=1, accepted_at=0.0).SerializeToString()


def drain(requests, context) -> bytes:
    """Read every message of the upload, then acknowledge it."""
    for _ in requests:
        pass
    return ACK


def handler() -> grpc.GenericRpcHandler:
    """Bytes in, bytes out: no deserializer, so nothing is parsed."""
    return grpc.method_handlers_generic_handler(
        SERVICE,
        {
            "Register": grpc.unary_unary_rpc_method_handler(lambda request, context: REGISTRATION),
            "Heartbeat": grpc.unary_unary_rpc_method_handler(lambda request, context: HEARTBEAT),
            "GetTask": grpc.unary_stream_rpc_method_handler(lambda request, context: iter((TASK,))),
            "PushUpdate": grpc.stream_unary_rpc_method_handler(drain),
        },
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--workers", type=int, default=256, help="threads and concurrent calls, as limits.max_concurrent_streams"
    )
    parser.add_argument("--max-pending", type=int, help="grpc.server.max_pending_requests (default: gRPC's)")
    parser.add_argument("--info", type=Path, required=True, help='where to write {"pid", "port"} once serving')
    args = parser.parse_args()
    options = [
        ("grpc.max_receive_message_length", 64 * 2**20),
        ("grpc.max_send_message_length", 64 * 2**20),
        ("grpc.max_concurrent_streams", args.workers),
        ("grpc.so_reuseport", 0),
    ]
    if args.max_pending:
        options += [
            ("grpc.server.max_pending_requests", args.max_pending),
            ("grpc.server.max_pending_requests_hard_limit", 2 * args.max_pending),
        ]
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=args.workers),
        handlers=[handler()],
        options=options,
        maximum_concurrent_rpcs=args.workers,
    )
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    tmp = args.info.with_name(args.info.name + ".tmp")
    tmp.write_text(json.dumps({"pid": os.getpid(), "port": port}))
    os.replace(tmp, args.info)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait()
    server.stop(grace=1.0).wait()


if __name__ == "__main__":
    main()
