"""The ceiling for benchmarks/load.py: a bare grpcio server that speaks the shape of ``fedrl.v1.Federation``.

Same server type as ``fedrl server`` (grpcio's synchronous server, one thread per call, the same
channel options), same method names, so the load generator runs unchanged against it. It does no
work: Register and Heartbeat answer fixed bytes, GetTask answers one fixed task, and PushUpdate
reads the upload's messages as raw bytes (no parsing, no hashing, no disk) and answers a fixed
``Ack``. What fedrl does on top of this is its own cost. With ``--aio``, the same answers from
grpcio's asyncio server (``grpc.aio``): one event loop and no handler threads, the ceiling of a
service written that way.

    python benchmarks/_echo_server.py --workers 2048 --info echo.json   # writes {"pid", "port"}, serves until SIGTERM
"""

from __future__ import annotations

import argparse
import asyncio
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


async def drain_async(requests, context) -> bytes:
    """``drain`` on the event loop."""
    async for _ in requests:
        pass
    return ACK


async def one_task(request, context):
    """GetTask's one message, streamed from the event loop."""
    yield TASK


def handler(asynchronous: bool = False) -> grpc.GenericRpcHandler:
    """Bytes in, bytes out: no deserializer, so nothing is parsed (coroutines for ``grpc.aio``)."""

    def fixed(answer: bytes):
        async def answered(request, context) -> bytes:
            return answer

        return answered if asynchronous else (lambda request, context: answer)

    return grpc.method_handlers_generic_handler(
        SERVICE,
        {
            "Register": grpc.unary_unary_rpc_method_handler(fixed(REGISTRATION)),
            "Heartbeat": grpc.unary_unary_rpc_method_handler(fixed(HEARTBEAT)),
            "GetTask": grpc.unary_stream_rpc_method_handler(
                one_task if asynchronous else lambda request, context: iter((TASK,))
            ),
            "PushUpdate": grpc.stream_unary_rpc_method_handler(drain_async if asynchronous else drain),
        },
    )


def write_info(path: Path, port: int) -> None:
    """``{"pid", "port"}`` at ``path``, atomically: the benchmark waits for it."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps({"pid": os.getpid(), "port": port}))
    os.replace(tmp, path)


async def serve_aio(options: list, workers: int, info: Path) -> None:
    """The echo on grpc.aio's server, until the process is stopped."""
    server = grpc.aio.server(handlers=[handler(asynchronous=True)], options=options, maximum_concurrent_rpcs=workers)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    write_info(info, port)
    await server.wait_for_termination()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--workers", type=int, default=256, help="threads and concurrent calls, as limits.max_concurrent_streams"
    )
    parser.add_argument("--max-pending", type=int, help="grpc.server.max_pending_requests (default: gRPC's)")
    parser.add_argument("--info", type=Path, required=True, help='where to write {"pid", "port"} once serving')
    parser.add_argument("--aio", action="store_true", help="serve with grpc.aio (one event loop) instead of threads")
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
    if args.aio:
        signal.signal(signal.SIGTERM, lambda *_: os._exit(0))  # nothing to flush: an echo keeps nothing
        asyncio.run(serve_aio(options, args.workers, args.info))
        return
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=args.workers),
        handlers=[handler()],
        options=options,
        maximum_concurrent_rpcs=args.workers,
    )
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    write_info(args.info, port)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait()
    server.stop(grace=1.0).wait()


if __name__ == "__main__":
    main()
