"""The ``fedrl.v1.Federation`` gRPC service over a ``Coordinator``, and the server that hosts it.

Each call authenticates its ``authorization: Bearer <token>`` metadata through the coordinator,
translates the request into records (``fedrl.wire.convert``), asks the coordinator, and
translates the answer back. A ``Rejected`` becomes the gRPC status named by its reason, with its
message as the details; any other exception becomes INTERNAL, is logged with its traceback, and
the server goes on serving.

An upload cannot hold the server hostage: a client may have at most ``limits.uploads_per_client``
uploads open at once, and a watchdog cancels an upload that sends nothing for
``limits.upload_idle_s`` or lasts longer than ``limits.upload_timeout_s``, so that its handler
thread is free again (one enrolled client holding dozens of silent streams once froze the server).

The handlers take and return raw bytes and parse them here rather than leaving it to gRPC, for
two reasons: bytes that are not a valid message get INVALID_ARGUMENT with a message saying so
(gRPC's own deserializer answers a bare INTERNAL), and the bytes in and out are counted exactly
for the ``bytes_received`` and ``bytes_sent`` metrics.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent import futures
from dataclasses import dataclass

import grpc
from google.protobuf.message import Message

from fedrl.server.config import LimitsConfig
from fedrl.server.coordinator import Coordinator
from fedrl.server.log import RefusalLog, log_event, logger
from fedrl.server.metrics import ServerMetrics
from fedrl.wire import convert
from fedrl.wire import fedrl_pb2 as pb
from fedrl.wire.convert import parse_message
from fedrl.wire.records import Reason, Rejected

TRANSPORT = "grpc"  # the label of this transport in the byte counters
WATCH_PERIOD_S = 0.5  # how often the upload watchdog looks
SERVICE = pb.DESCRIPTOR.services_by_name["Federation"].full_name


def _bearer_token(context: grpc.ServicerContext) -> str:
    """The token of the call's ``authorization: Bearer <token>`` metadata; empty when there is none."""
    for key, value in context.invocation_metadata():
        if key == "authorization" and isinstance(value, str) and value.startswith("Bearer "):
            return value.removeprefix("Bearer ").strip()
    return ""


@dataclass
class _Upload:
    """An upload in progress, as the watchdog sees it."""

    client: str
    context: grpc.ServicerContext
    started: float
    last_heard: float


class Uploads:
    """The uploads in progress: at most ``per_client`` for one client, and a watchdog thread that
    cancels those silent for ``idle_s`` or running for more than ``timeout_s``. The watchdog runs
    only while some upload is open."""

    def __init__(
        self,
        per_client: int,
        idle_s: float,
        timeout_s: float,
        refusals: RefusalLog,
        on_cancel: Callable[[str], None] = lambda _client: None,
    ) -> None:
        self.per_client, self.idle_s, self.timeout_s, self._refusals = per_client, idle_s, timeout_s, refusals
        self._on_cancel = on_cancel
        self._open: dict[int, _Upload] = {}
        self._lock = threading.Lock()
        self._watching = False

    @contextlib.contextmanager
    def open(self, client: str, context: grpc.ServicerContext) -> Iterator[Callable[[], None]]:
        """Hold one of ``client``'s upload slots for the block; yields the function that notes a
        chunk heard. ``Rejected(RESOURCE_EXHAUSTED)`` when its slots are all taken."""
        now = time.monotonic()
        with self._lock:
            if sum(u.client == client for u in self._open.values()) >= self.per_client:
                raise Rejected(
                    Reason.RESOURCE_EXHAUSTED,
                    f"client {client!r} already has {self.per_client} uploads open; finish one first",
                )
            upload = self._open[id(context)] = _Upload(client, context, now, now)
            if not self._watching:
                self._watching = True
                threading.Thread(target=self._watch, name="fedrl-upload-watchdog", daemon=True).start()
        try:
            yield lambda: setattr(upload, "last_heard", time.monotonic())
        finally:
            with self._lock:
                self._open.pop(id(context), None)

    def _watch(self) -> None:
        while True:
            time.sleep(WATCH_PERIOD_S)
            now = time.monotonic()
            with self._lock:
                if not self._open:
                    self._watching = False
                    return
                expired = [
                    u for u in self._open.values()
                    if now - u.last_heard > self.idle_s or now - u.started > self.timeout_s
                ]  # fmt: skip
            for upload in expired:
                seconds = round(now - upload.started, 1)
                self._refusals.log(
                    "upload_cancelled", (upload.client, "cancelled"), client=upload.client, seconds=seconds
                )
                upload.context.cancel()
                self._on_cancel(upload.client)


class FederationService:
    """The handlers of ``fedrl.v1.Federation``; ``handler()`` registers them with a ``grpc.Server``."""

    def __init__(self, coordinator: Coordinator, metrics: ServerMetrics | None = None) -> None:
        self._coordinator = coordinator
        limits = coordinator.config.limits
        self.uploads = Uploads(
            limits.uploads_per_client,
            limits.upload_idle_s,
            limits.upload_timeout_s,
            coordinator.refusals,
            lambda client: coordinator.forfeit(client, "its upload went silent and was cancelled"),
        )
        self._received = metrics.bytes_received.labels(transport=TRANSPORT) if metrics else None
        self._sent = metrics.bytes_sent.labels(transport=TRANSPORT) if metrics else None

    def handler(self) -> grpc.GenericRpcHandler:
        """The service's methods, each guarded so that every failure is a status with a message."""
        unary, stream_out, stream_in = (
            grpc.unary_unary_rpc_method_handler,
            grpc.unary_stream_rpc_method_handler,
            grpc.stream_unary_rpc_method_handler,
        )
        return grpc.method_handlers_generic_handler(
            SERVICE,
            {
                "Register": unary(self._guarded("Register", self.register)),
                "Heartbeat": unary(self._guarded("Heartbeat", self.heartbeat)),
                "GetTask": stream_out(self._guarded("GetTask", self.get_task)),
                "PullModel": stream_out(self._guarded("PullModel", self.pull_model)),
                "PushUpdate": stream_in(self._guarded("PushUpdate", self.push_update)),
                "SecureStep": unary(self._guarded("SecureStep", self.secure_step)),
            },
        )

    def _guarded(self, method: str, body: Callable) -> Callable:
        """``body``, with ``Rejected`` turned into its status and anything else into INTERNAL."""

        def call(request, context: grpc.ServicerContext):
            try:
                return body(request, context)
            except Rejected as refusal:
                code, message = grpc.StatusCode[refusal.reason.value], refusal.message
                peer = context.peer()
                self._coordinator.refusals.log(
                    "call_refused", (peer.rsplit(":", 1)[0], method, code), method=method, code=code.name,
                    message=message, peer=peer,
                )  # fmt: skip
            except Exception as error:  # a bug or a failing disk: answer, log, keep serving
                if not context.is_active():  # the caller hung up mid-call (a dropped link): no one to answer
                    log_event("call_abandoned", method=method, peer=context.peer())
                    return None
                code, message = (
                    grpc.StatusCode.INTERNAL,
                    f"internal server error in {method} ({type(error).__name__}); see the server log",
                )
                logger.error(
                    "call_failed", exc_info=error, extra={"fields": {"method": method, "peer": context.peer()}}
                )
            context.abort(code, message)

        return call

    def _client(self, context: grpc.ServicerContext) -> str:
        """The calling client, by its token; unknown tokens are limited per peer address."""
        return self._coordinator.authenticate(_bearer_token(context), context.peer().rsplit(":", 1)[0])

    def _in(self, raw: bytes) -> bytes:
        if self._received is not None:
            self._received.inc(len(raw))
        return raw

    def _out(self, message: Message) -> bytes:
        raw = message.SerializeToString()
        if self._sent is not None:
            self._sent.inc(len(raw))
        return raw

    def register(self, request: bytes, context: grpc.ServicerContext) -> bytes:
        """Register the calling client; the name it gives must be its token's."""
        client = self._client(context)
        claimed = parse_message(pb.RegisterRequest, self._in(request)).client
        if claimed != client:
            raise Rejected(
                Reason.PERMISSION_DENIED, f"the token belongs to {client!r}; it cannot register as {claimed!r}"
            )
        return self._out(convert.registration_message(self._coordinator.register(client)))

    def heartbeat(self, request: bytes, context: grpc.ServicerContext) -> bytes:
        """Note the caller alive with the version it acts with; answer the deployed version."""
        client = self._client(context)
        beat = parse_message(pb.HeartbeatRequest, self._in(request))
        acting = beat.acting_version if beat.HasField("acting_version") else None
        return self._out(pb.HeartbeatReply(deployed_version=self._coordinator.heartbeat(client, acting)))

    def get_task(self, request: bytes, context: grpc.ServicerContext) -> Iterator[bytes]:
        """The caller's task (with SCAFFOLD's server control in chunks) or a wait."""
        client = self._client(context)
        parse_message(pb.TaskRequest, self._in(request))
        task = self._coordinator.task(client, self._coordinator.config.rounds.long_poll_s)
        return map(self._out, convert.task_parts(task))

    def pull_model(self, request: bytes, context: grpc.ServicerContext) -> Iterator[bytes]:
        """One stored version (the deployed one when none is named), header then chunks."""
        self._coordinator.admit(self._client(context))
        pull = parse_message(pb.PullRequest, self._in(request))
        model = self._coordinator.model(pull.version if pull.HasField("version") else None)
        return map(self._out, convert.model_parts(model))

    def push_update(self, requests: Iterable[bytes], context: grpc.ServicerContext) -> bytes:
        """Reassemble one update from its stream and submit it as the caller; answer its ``Ack``."""
        client = self._client(context)  # before a single chunk is read
        self._coordinator.admit(client)  # the rate limit too, so refused uploads are counted as calls
        with self.uploads.open(client, context) as heard:
            parts = (parse_message(pb.UpdatePart, self._in(_heard(raw, heard))) for raw in requests)
            try:
                submission = convert.read_update(parts, self._coordinator.max_update_bytes, self._coordinator.dim)
            except Rejected as refusal:  # the coordinator counts the refusals it makes itself
                self._coordinator.note_rejected(client, refusal)
                raise
        return self._out(convert.ack_message(self._coordinator.submit(client, submission, admitted=True)))

    def secure_step(self, request: bytes, context: grpc.ServicerContext) -> bytes:
        """One step of the open round's secure aggregation, as the caller."""
        client = self._client(context)
        round_, step, payload = convert.read_secure_request(parse_message(pb.SecureRequest, self._in(request)))
        return self._out(convert.secure_reply_message(self._coordinator.secure_step(client, round_, step, payload)))


def _heard(raw: bytes, heard: Callable[[], None]) -> bytes:
    heard()
    return raw


def serve_grpc(
    coordinator: Coordinator,
    address: str,
    credentials: grpc.ServerCredentials | None,
    limits: LimitsConfig,
    metrics: ServerMetrics | None = None,
) -> tuple[grpc.Server, int]:
    """Start serving ``coordinator`` on ``address`` (TLS with ``credentials``; plain text with None).

    Returns the started server and the port it bound (the real one for port 0). Messages above
    ``limits.max_message_bytes`` are refused by gRPC with RESOURCE_EXHAUSTED; at most
    ``limits.max_concurrent_streams`` calls are accepted at once (more are refused with
    RESOURCE_EXHAUSTED), served by ``limits.worker_threads`` threads: the rest wait in gRPC's
    queue, which costs far less than a thousand threads contending for the coordinator (an upload
    from a slow link holds its thread for as long as it takes). The caller checks that plain text is allowed
    (``fedrl.wire.tls.ensure_plaintext_allowed``) and stops the server with ``server.stop(grace)``.
    """
    streams = limits.max_concurrent_streams
    options = [
        ("grpc.max_receive_message_length", limits.max_message_bytes),
        ("grpc.max_send_message_length", limits.max_message_bytes),
        ("grpc.max_concurrent_streams", streams),
        # calls the C core has accepted but no Python thread has picked up yet; past this the
        # client sees CANCELLED. The default (a few hundred) drops calls from a 1,000-client fleet
        # that is merely queued behind the worker threads (benchmarks/load.py).
        ("grpc.server.max_pending_requests", 8 * streams),
        ("grpc.server.max_pending_requests_hard_limit", 16 * streams),
        ("grpc.so_reuseport", 0),  # a second server on a port in use must fail, not share it
        ("grpc.http2.bdp_probe", int(limits.grow_windows)),  # off: a burst of uploads is buffered 64 KiB a call
    ]
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=min(streams, limits.worker_threads), thread_name_prefix="fedrl-grpc"),
        handlers=[FederationService(coordinator, metrics).handler()],
        options=options,
        maximum_concurrent_rpcs=streams,
    )
    port = server.add_secure_port(address, credentials) if credentials else server.add_insecure_port(address)
    server.start()
    return server, port
