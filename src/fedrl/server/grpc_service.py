"""The ``fedrl.v1.Federation`` gRPC service over a ``Coordinator``, and the server that hosts it.

Each call authenticates its ``authorization: Bearer <token>`` metadata through the coordinator,
translates the request into records (``fedrl.wire.convert``), asks the coordinator, and
translates the answer back. A ``Rejected`` becomes the gRPC status named by its reason, with its
message as the details; any other exception becomes INTERNAL, is logged with its traceback, and
the server goes on serving.

The service runs on ``grpc.aio``: one event loop, on a thread of its own, reads every call and
does its work (reassembling, checking, writing and recording an update included); the waits on the
disk go to a pool of ``limits.worker_threads`` threads: the fsyncs of an update's file and record,
registering, pulling a stored version, and so do long polls. The loop still takes the
coordinator's lock, which another thread may hold while it writes (a round's new version: some
milliseconds), and then waits for it. A hand-off between threads costs more than
most of the work it would move: a thread per call, as before, spent most of an update's CPU
handing the coordinator's lock and the interpreter between threads (docs/benchmarks.md, Load).

An upload cannot hold the server hostage: a client may have at most ``limits.uploads_per_client``
uploads open at once, and a watchdog cancels an upload that sends nothing for
``limits.upload_idle_s`` or lasts longer than ``limits.upload_timeout_s`` while it is being read
(one enrolled client holding dozens of silent streams once froze the server).

The handlers take and return raw bytes and parse them here rather than leaving it to gRPC, for
two reasons: bytes that are not a valid message get INVALID_ARGUMENT with a message saying so
(gRPC's own deserializer answers a bare INTERNAL), and the bytes in and out are counted exactly
for the ``bytes_received`` and ``bytes_sent`` metrics.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections import OrderedDict
from collections.abc import AsyncIterable, Callable, Iterator
from concurrent import futures
from dataclasses import dataclass

import grpc
import numpy as np
from google.protobuf.message import Message

from fedrl.server.config import LimitsConfig
from fedrl.server.coordinator import Coordinator
from fedrl.server.log import RefusalLog, log_event, logger
from fedrl.server.metrics import ServerMetrics
from fedrl.wire import convert
from fedrl.wire import fedrl_pb2 as pb
from fedrl.wire.convert import parse_message
from fedrl.wire.records import Ack, Model, Reason, Rejected

TRANSPORT = "grpc"  # the label of this transport in the byte counters
WATCH_PERIOD_S = 0.5  # how often the upload watchdog looks
VERSIONS_SERIALIZED = 4  # versions whose serialized stream is kept for pulls (the newest ones asked for)
SERVICE = pb.DESCRIPTOR.services_by_name["Federation"].full_name


def _settled(tasks: set[asyncio.Task]) -> Callable[[asyncio.Task], None]:
    """A done callback: forget the task and take its outcome (the caller, if still there, has it too)."""

    def done(task: asyncio.Task) -> None:
        tasks.discard(task)
        if not task.cancelled():
            task.exception()

    return done


def _bearer_token(context: grpc.aio.ServicerContext) -> str:
    """The token of the call's ``authorization: Bearer <token>`` metadata; empty when there is none."""
    for key, value in context.invocation_metadata() or ():
        if key == "authorization" and isinstance(value, str) and value.startswith("Bearer "):
            return value.removeprefix("Bearer ").strip()
    return ""


@dataclass
class _Upload:
    """An upload in progress, as the watchdog sees it."""

    client: str
    started: float
    last_heard: float
    reader: asyncio.Task | None = None  # the task reading its stream, while it reads
    expired: bool = False  # the watchdog cancelled it


class Uploads:
    """The uploads in progress: at most ``per_client`` for one client, and a watchdog (a task of
    the event loop, running only while some upload is open) that cancels those silent for
    ``idle_s`` or read for more than ``timeout_s`` (it cancels their reader). Used from the event
    loop only."""

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
        self._watch_task: asyncio.Task | None = None

    @contextlib.contextmanager
    def open(self, client: str) -> Iterator[_Upload]:
        """Hold one of ``client``'s upload slots for the block; yields the upload, whose ``reader``
        and ``last_heard`` the caller sets. ``Rejected(RESOURCE_EXHAUSTED)`` when its slots are all
        taken."""
        if sum(u.client == client for u in self._open.values()) >= self.per_client:
            raise Rejected(
                Reason.RESOURCE_EXHAUSTED,
                f"client {client!r} already has {self.per_client} uploads open; finish one first",
            )
        now = time.monotonic()
        upload = _Upload(client, now, now)
        self._open[id(upload)] = upload
        if self._watch_task is None:
            self._watch_task = asyncio.get_running_loop().create_task(self._watch())
        try:
            yield upload
        finally:
            self._open.pop(id(upload), None)

    def _expired(self, upload: _Upload, now: float) -> bool:
        """Whether ``upload`` is being read and went silent or has taken too long."""
        if upload.reader is None or upload.reader.done():
            return False
        return now - upload.last_heard > self.idle_s or now - upload.started > self.timeout_s

    async def _watch(self) -> None:
        try:
            await self._watch_open()
        finally:
            self._watch_task = None

    async def _watch_open(self) -> None:
        while self._open:
            await asyncio.sleep(WATCH_PERIOD_S)
            now = time.monotonic()
            expired = [u for u in self._open.values() if self._expired(u, now)]
            for upload in expired:
                seconds = round(now - upload.started, 1)
                self._refusals.log(
                    "upload_cancelled", (upload.client, "cancelled"), client=upload.client, seconds=seconds
                )
                upload.expired = True
                upload.reader.cancel()
                upload.reader = None
                self._on_cancel(upload.client)


class FederationService:
    """The handlers of ``fedrl.v1.Federation``; ``handler()`` registers them with a ``grpc.aio.Server``.
    Blocking work runs on ``pool``."""

    def __init__(
        self, coordinator: Coordinator, pool: futures.ThreadPoolExecutor, metrics: ServerMetrics | None = None
    ) -> None:
        self._coordinator, self._pool = coordinator, pool
        limits = coordinator.config.limits
        self.uploads = Uploads(
            limits.uploads_per_client,
            limits.upload_idle_s,
            limits.upload_timeout_s,
            coordinator.refusals,
            lambda client: coordinator.forfeit(client, "its upload went silent and was cancelled"),
        )
        self._reading = asyncio.Semaphore(limits.worker_threads)  # uploads read at once
        self._versions: OrderedDict[int, tuple[bytes, ...]] = OrderedDict()  # see _model_messages
        self._accepting: set[asyncio.Task] = set()
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

        async def call(request, context: grpc.aio.ServicerContext):
            try:
                return await body(request, context)
            except grpc.aio.AbortError:  # the body ended the call with its own status
                raise
            except Rejected as refusal:
                code, message = grpc.StatusCode[refusal.reason.value], refusal.message
                peer = context.peer()
                self._coordinator.refusals.log(
                    "call_refused", (peer.rsplit(":", 1)[0], method, code), method=method, code=code.name,
                    message=message, peer=peer,
                )  # fmt: skip
            except Exception as error:  # a bug or a failing disk: answer, log, keep serving
                if context.done():  # the caller hung up mid-call (a dropped link): no one to answer
                    log_event("call_abandoned", method=method, peer=context.peer())
                    return None
                code, message = (
                    grpc.StatusCode.INTERNAL,
                    f"internal server error in {method} ({type(error).__name__}); see the server log",
                )
                logger.error(
                    "call_failed", exc_info=error, extra={"fields": {"method": method, "peer": context.peer()}}
                )
            await context.abort(code, message)

        return call

    async def _blocking(self, function: Callable, *args):
        """``function(*args)`` on the pool: work that waits on the disk or holds a client."""
        return await asyncio.get_running_loop().run_in_executor(self._pool, function, *args)

    async def _on_disk(self, function: Callable, *args):
        """``function(*args)``: on the pool when it waits for the disk (a ``durable`` store), else here."""
        if self._coordinator.durable:
            return await self._blocking(function, *args)
        return function(*args)

    def _client(self, context: grpc.aio.ServicerContext) -> str:
        """The calling client, by its token; unknown tokens are limited per peer address."""
        return self._coordinator.authenticate(_bearer_token(context), context.peer().rsplit(":", 1)[0])

    def _in(self, raw: bytes) -> bytes:
        if self._received is not None:
            self._received.inc(len(raw))
        return raw

    def _out(self, message: Message) -> bytes:
        return self._sent_bytes(message.SerializeToString())

    def _sent_bytes(self, raw: bytes) -> bytes:
        if self._sent is not None:
            self._sent.inc(len(raw))
        return raw

    async def register(self, request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        """Register the calling client; the name it gives must be its token's."""
        client = self._client(context)
        claimed = parse_message(pb.RegisterRequest, self._in(request)).client
        if claimed != client:
            raise Rejected(
                Reason.PERMISSION_DENIED, f"the token belongs to {client!r}; it cannot register as {claimed!r}"
            )
        return self._out(convert.registration_message(await self._blocking(self._coordinator.register, client)))

    async def heartbeat(self, request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        """Note the caller alive with the version it acts with; answer the deployed version."""
        client = self._client(context)
        beat = parse_message(pb.HeartbeatRequest, self._in(request))
        acting = beat.acting_version if beat.HasField("acting_version") else None
        return self._out(pb.HeartbeatReply(deployed_version=self._coordinator.heartbeat(client, acting)))

    async def get_task(self, request: bytes, context: grpc.aio.ServicerContext) -> None:
        """The caller's task (with SCAFFOLD's server control in chunks) or a wait; a wait for the
        next round is held on the pool (``rounds.long_poll_s``)."""
        client = self._client(context)
        parse_message(pb.TaskRequest, self._in(request))
        task = self._coordinator.task(client)
        wait_s = self._coordinator.config.rounds.long_poll_s
        if self._coordinator.holds(client, task, wait_s):
            task = await self._blocking(self._coordinator.hold, client, wait_s)
        for part in convert.task_parts(task):
            await context.write(self._out(part))

    async def pull_model(self, request: bytes, context: grpc.aio.ServicerContext) -> None:
        """One stored version (the deployed one when none is named), header then chunks."""
        self._coordinator.admit(self._client(context))
        pull = parse_message(pb.PullRequest, self._in(request))
        model = await self._blocking(self._coordinator.model, pull.version if pull.HasField("version") else None)
        for raw in self._model_messages(model):
            await context.write(self._sent_bytes(raw))

    def _model_messages(self, model: Model) -> tuple[bytes, ...]:
        """A version's stream, serialized (and its parameters hashed) once for every device that
        pulls it, not once per pull: when a new version is deployed the whole fleet asks for it at
        once. The newest few versions are kept; a version's content never changes."""
        messages = self._versions.get(model.version)
        if messages is None:
            messages = tuple(part.SerializeToString() for part in convert.model_parts(model))
            self._versions[model.version] = messages
            if len(self._versions) > VERSIONS_SERIALIZED:
                self._versions.popitem(last=False)
        self._versions.move_to_end(model.version)
        return messages

    async def push_update(self, requests: AsyncIterable[bytes], context: grpc.aio.ServicerContext) -> bytes:
        """Read one update's stream (its header checked before any chunk is read), then reassemble,
        check, store and record it (``_accept``); answer its ``Ack``."""
        client = self._client(context)  # before a single chunk is read
        self._coordinator.admit(client)  # the rate limit too, so refused uploads are counted as calls
        with self.uploads.open(client) as upload:
            async with self._reading:  # the others wait unread, each holding one HTTP/2 window of bytes
                return await self._upload(client, requests, upload, context)

    async def _upload(
        self, client: str, requests: AsyncIterable[bytes], upload: _Upload, context: grpc.aio.ServicerContext
    ) -> bytes:
        """Read the upload's stream (its ``reader``, which the watchdog may cancel), then accept it."""
        upload.started = upload.last_heard = time.monotonic()
        upload.reader = asyncio.ensure_future(self._read_stream(requests, upload))
        try:
            header, buffer = await upload.reader
        except Rejected as refusal:  # the coordinator counts the refusals it makes itself
            self._coordinator.note_rejected(client, refusal)
            raise
        except asyncio.CancelledError:
            if not upload.expired:  # the call itself was cancelled
                raise
            await context.abort(grpc.StatusCode.CANCELLED, "the upload went silent or took too long; cancelled")
        upload.reader = None
        accepting = asyncio.ensure_future(self._accept(client, header, buffer))
        self._accepting.add(accepting)  # a reference, and its outcome taken, should the client be gone
        accepting.add_done_callback(_settled(self._accepting))
        return self._out(convert.ack_message(await asyncio.shield(accepting)))

    async def _read_stream(self, requests: AsyncIterable[bytes], upload: _Upload) -> tuple[pb.UpdateHeader, np.ndarray]:
        """The stream's header and its chunks' bytes in one buffer of the size it declares, filled
        as they come (growing it chunk by chunk would leave the allocator a trail of freed
        blocks; its pages are taken only as bytes arrive, so a header alone costs none): a header
        declaring more than the model's size or the server's limit is refused at once, as is an
        asynchronous update that no buffer has room for, a second header, an empty chunk or more
        bytes than declared as they come. Returns the bytes received, which the checks compare
        with the declared size."""
        header: pb.UpdateHeader | None = None
        buffer, filled = np.empty(0, dtype=np.uint8), 0
        most, dim = self._coordinator.max_update_bytes, self._coordinator.dim
        async for raw in requests:
            upload.last_heard = time.monotonic()
            part = parse_message(pb.UpdatePart, self._in(raw))
            if header is None:
                buffer = np.empty(convert.declared_update_bytes(part, most, dim), dtype=np.uint8)
                header = part.header
                self._coordinator.check_room(header.update_id, header.base_version)  # before its bytes are read
                continue
            chunk = part.chunk
            if part.WhichOneof("part") != "chunk" or not chunk:
                raise Rejected(Reason.INVALID_ARGUMENT, "an update stream has one header, then only non-empty chunks")
            if filled + len(chunk) > len(buffer):
                raise Rejected(
                    Reason.INVALID_ARGUMENT, f"received more than the {len(buffer)} bytes the header declares"
                )
            buffer[filled : filled + len(chunk)] = np.frombuffer(chunk, dtype=np.uint8)
            filled += len(chunk)
        if header is None:
            raise Rejected(Reason.INVALID_ARGUMENT, "an update stream must start with its header")
        return header, buffer if filled == len(buffer) else buffer[:filled]

    async def _accept(self, client: str, header: pb.UpdateHeader, buffer: np.ndarray) -> Ack:
        """Reassemble, check, write and record the update on the loop, and wait for the disk (its
        file's and its record's fsyncs) on the pool: a hand-off between threads costs more than the
        work it would move (docs/benchmarks.md, Load). Shielded by the caller: once begun, it ends,
        whether or not the client is still there to hear its ack."""
        coordinator = self._coordinator
        try:
            submission = convert.read_update_from(header, [buffer], coordinator.max_update_bytes, coordinator.dim)
        except Rejected as refusal:
            coordinator.note_rejected(client, refusal)
            raise
        taken = coordinator.accept(client, submission, admitted=True, verified=True)
        if isinstance(taken, Ack):  # a resend: its record may still be on its way to the disk
            await self._on_disk(coordinator.sync_records, coordinator.newest_record)
            return taken
        await self._on_disk(coordinator.write, taken)
        ack, ticket = coordinator.record(taken)
        await self._on_disk(coordinator.sync_records, ticket)
        return ack

    async def secure_step(self, request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        """One step of the open round's secure aggregation, as the caller."""
        client = self._client(context)
        round_, step, payload = convert.read_secure_request(parse_message(pb.SecureRequest, self._in(request)))
        reply = await self._blocking(self._coordinator.secure_step, client, round_, step, payload)
        return self._out(convert.secure_reply_message(reply))


class GrpcServer:
    """A started ``grpc.aio`` server, its event loop on a thread of its own and its worker pool."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        server: grpc.aio.Server,
        pool: futures.ThreadPoolExecutor,
        coordinator: Coordinator,
    ) -> None:
        self._loop, self._server, self._pool, self._coordinator = loop, server, pool, coordinator
        self._thread = threading.Thread(target=loop.run_forever, name="fedrl-grpc-loop", daemon=True)
        self._thread.start()

    def stop(self, grace: float | None = None) -> None:
        """Stop serving: calls in flight get ``grace`` seconds to end (None: cancelled at once), clients
        held in a long poll are answered at once; returns once the loop and the pool are done."""
        if not self._thread.is_alive():
            return
        self._coordinator.release()
        asyncio.run_coroutine_threadsafe(self._stopped(grace), self._loop).result()
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()
        self._loop.close()
        self._pool.shutdown(wait=True, cancel_futures=True)

    async def _stopped(self, grace: float | None) -> None:
        """Stop the server, then end what is left on the loop (the upload watchdog)."""
        await self._server.stop(grace)
        left = [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]
        for task in left:
            task.cancel()
        await asyncio.gather(*left, return_exceptions=True)


def serve_grpc(
    coordinator: Coordinator,
    address: str,
    credentials: grpc.ServerCredentials | None,
    limits: LimitsConfig,
    metrics: ServerMetrics | None = None,
) -> tuple[GrpcServer, int]:
    """Start serving ``coordinator`` on ``address`` (TLS with ``credentials``; plain text with None).

    Returns the started server and the port it bound (the real one for port 0). Messages above
    ``limits.max_message_bytes`` are refused by gRPC with RESOURCE_EXHAUSTED; at most
    ``limits.max_concurrent_streams`` calls are accepted at once (more are refused with
    RESOURCE_EXHAUSTED). The caller checks that plain text is allowed
    (``fedrl.wire.tls.ensure_plaintext_allowed``) and stops the server with ``server.stop(grace)``.
    """
    streams = limits.max_concurrent_streams
    options = [
        ("grpc.max_receive_message_length", limits.max_message_bytes),
        ("grpc.max_send_message_length", limits.max_message_bytes),
        ("grpc.max_concurrent_streams", streams),
        # calls the C core has accepted but the service has not picked up yet; past this the
        # client sees CANCELLED. The default (a few hundred) drops calls from a 1,000-client fleet
        # that is merely queued (benchmarks/load.py).
        ("grpc.server.max_pending_requests", 8 * streams),
        ("grpc.server.max_pending_requests_hard_limit", 16 * streams),
        ("grpc.so_reuseport", 0),  # a second server on a port in use must fail, not share it
        ("grpc.http2.bdp_probe", int(limits.grow_windows)),  # off: a burst of uploads is buffered 64 KiB a call
    ]
    pool = futures.ThreadPoolExecutor(max_workers=limits.worker_threads, thread_name_prefix="fedrl-grpc")
    loop = asyncio.new_event_loop()

    async def start() -> tuple[grpc.aio.Server, int]:
        server = grpc.aio.server(
            handlers=[FederationService(coordinator, pool, metrics).handler()],
            options=options,
            maximum_concurrent_rpcs=streams,
        )
        port = server.add_secure_port(address, credentials) if credentials else server.add_insecure_port(address)
        await server.start()
        return server, port

    try:
        server, port = loop.run_until_complete(start())
    except BaseException:
        loop.close()
        pool.shutdown(wait=False)
        raise
    return GrpcServer(loop, server, pool, coordinator), port
