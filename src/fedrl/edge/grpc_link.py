"""The edge agent's ``Link`` over gRPC: one channel to the federation server, one client's token.

Every call sends ``authorization: Bearer <token>`` and has a deadline of ``timeout_s`` (for a
streamed model or update, the whole transfer must fit in it). Models and updates travel in
chunks (``fedrl.wire.convert``). Failures are sorted into the two the agent understands:

- ``Rejected`` when the server refused with a status that names a ``Reason`` (INVALID_ARGUMENT,
  PERMISSION_DENIED, ...), carrying the server's message: retrying the same call will not help;
- ``Untrusted`` when the TLS handshake failed because the server's certificate does not verify
  against the given CA or names another host: a wrong setting, not a passing failure;
- ``Unreachable`` for every other status: UNAVAILABLE (no server, no network, or a server whose
  buffers are full), DEADLINE_EXCEEDED,
  CANCELLED, and INTERNAL or UNKNOWN from a server in trouble, which may pass once it restarts --
  the agent backs off and tries again.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import grpc

from fedrl.edge.link import Unreachable, Untrusted
from fedrl.wire import convert
from fedrl.wire import fedrl_pb2 as pb
from fedrl.wire.fedrl_pb2_grpc import FederationStub
from fedrl.wire.records import (
    Ack,
    Model,
    Registration,
    Rejected,
    SecureReply,
    SecureStep,
    Submission,
    Task,
    Wait,
    final_reason,
)

# What gRPC's TLS handshake reports when the server's certificate does not verify: another CA, another host.
UNTRUSTED_MARKERS = ("CERTIFICATE_VERIFY_FAILED", "is not in peer certificate")
MAX_DOWNLOAD_BYTES = 2**32  # largest model or server control the link will buffer (a billion float32)


@contextlib.contextmanager
def _translated(method: str) -> Iterator[None]:
    """Turn a failed call's ``grpc.RpcError`` into ``Rejected`` or ``Unreachable``."""
    try:
        yield
    except grpc.RpcError as error:
        code, details = error.code(), error.details() or ""
        reason = final_reason(code.name)
        if reason is not None:
            raise Rejected(reason, details) from error
        if code is grpc.StatusCode.UNAVAILABLE and any(marker in details for marker in UNTRUSTED_MARKERS):
            raise Untrusted(
                f"{method}: the server's certificate failed verification; give --ca the CA that signed it "
                f"and dial a name it was issued for ({details.rsplit('ipv4:', 1)[-1].strip()})"
            ) from error
        raise Unreachable(f"{method}: {code.name}: {details}") from error


class GrpcLink:
    """``Link`` for one client over a gRPC channel; TLS with ``credentials``, plain text with None.

    The caller checks that plain text is allowed (``fedrl.wire.tls.ensure_plaintext_allowed``).
    """

    def __init__(
        self,
        address: str,
        token: str,
        client_name: str,
        credentials: grpc.ChannelCredentials | None = None,
        timeout_s: float = 30.0,
    ) -> None:
        self.client_name = client_name
        self._channel = grpc.secure_channel(address, credentials) if credentials else grpc.insecure_channel(address)
        self._stub = FederationStub(self._channel)
        self._call = {"metadata": (("authorization", f"Bearer {token}"),), "timeout": timeout_s}

    def register(self) -> Registration:
        """Announce this client (idempotent) and learn the experiment it trains."""
        with _translated("Register"):
            reply = self._stub.Register(pb.RegisterRequest(client=self.client_name), **self._call)
        return convert.read_registration(reply)

    def heartbeat(self, acting_version: int | None) -> int:
        """Report liveness and the version acting now; returns the deployed version."""
        with _translated("Heartbeat"):
            return self._stub.Heartbeat(
                pb.HeartbeatRequest(acting_version=acting_version), **self._call
            ).deployed_version

    def task(self) -> Task | Wait:
        """Ask what to do: train from a version for a round (with the server control, if any), or wait."""
        with _translated("GetTask"):
            return convert.read_task(self._stub.GetTask(pb.TaskRequest(), **self._call), MAX_DOWNLOAD_BYTES)

    def pull(self, version: int) -> Model:
        """Download one stored global version."""
        with _translated("PullModel"):
            return convert.read_model(
                self._stub.PullModel(pb.PullRequest(version=version), **self._call), MAX_DOWNLOAD_BYTES
            )

    def push(self, submission: Submission) -> Ack:
        """Upload one update in chunks; returns its durable acknowledgement (again, for a resubmission)."""
        with _translated("PushUpdate"):
            reply = self._stub.PushUpdate(convert.update_parts(submission), **self._call)
        return convert.read_ack(reply)

    def secure(self, round_: int, step: SecureStep, payload: bytes) -> SecureReply:
        """One step of a secure-aggregation round (or a poll, with an empty payload)."""
        with _translated("SecureStep"):
            reply = self._stub.SecureStep(convert.secure_request(round_, step, payload), **self._call)
        return convert.read_secure_reply(reply)

    def close(self) -> None:
        """Close the channel; calls after this fail."""
        self._channel.close()
