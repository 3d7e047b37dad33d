"""Messages split into a manifest and checksummed chunks come back bit for bit; a missing or
corrupt chunk is asked for again and a message is never handed on incomplete."""

import hashlib

import pytest

from fedrl.wire import mqtt_pb2 as mq
from fedrl.wire.mqtt_frames import Inbox, Outbox, split
from fedrl.wire.records import Reason, Rejected

LIMIT = 1024


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def frames_of(message: bytes, max_payload: int = LIMIT) -> list[mq.Frame]:
    return [mq.Frame.FromString(f) for f in split("m1", message, max_payload).frames]


def test_a_message_that_fits_is_one_frame():
    (frame,) = frames_of(b"small")
    assert frame.WhichOneof("body") == "whole" and frame.whole == b"small"


def test_a_large_message_is_a_manifest_then_chunks_within_the_limit_and_comes_back_bit_for_bit():
    # Prepare
    message = bytes(range(256)) * 40  # 10 kB
    outgoing = split("m1", message, LIMIT)
    inbox = Inbox(max_bytes=2**20)

    # Execute
    results = [inbox.offer("k", mq.Frame.FromString(f)) for f in outgoing.frames]

    # Assert
    assert max(map(len, outgoing.frames)) <= LIMIT and len(outgoing.frames) > 10
    manifest = mq.Frame.FromString(outgoing.frames[0]).manifest
    assert manifest.size == len(message) and manifest.sha256 == hashlib.sha256(message).digest()
    assert [r.message for r in results[:-1]] == [None] * (len(results) - 1)
    assert results[-1].message == message


def test_chunks_arriving_out_of_order_or_twice_still_make_one_message():
    message = bytes(5000)
    manifest, *chunks = frames_of(message)
    inbox = Inbox(max_bytes=2**20)
    inbox.offer("k", manifest)
    for chunk in chunks[1:] + chunks[1:3]:
        assert inbox.offer("k", chunk).message is None
    assert inbox.offer("k", chunks[0]).message == message


def test_a_corrupt_chunk_is_asked_for_again_at_once_and_the_message_waits_for_a_good_one():
    # Prepare
    message = bytes(range(256)) * 20
    manifest, *chunks = frames_of(message)
    inbox = Inbox(max_bytes=2**20)
    inbox.offer("k", manifest)
    corrupt = mq.Frame()
    corrupt.CopyFrom(chunks[2])
    corrupt.chunk.data = bytes([corrupt.chunk.data[0] ^ 1]) + corrupt.chunk.data[1:]

    # Execute
    offered = inbox.offer("k", corrupt)
    others = [inbox.offer("k", c).message for i, c in enumerate(chunks) if i != 2]
    repaired = inbox.offer("k", chunks[2])

    # Assert
    assert offered.resend == (2,) and offered.message is None
    assert others == [None] * (len(chunks) - 1)
    assert repaired.message == message


def test_missing_chunks_are_asked_for_after_a_pause_and_abandoned_after_the_last_try():
    # Prepare
    clock = Clock()
    manifest, *chunks = frames_of(bytes(5000))
    inbox = Inbox(max_bytes=2**20, resend_after_s=2.0, max_resends=2, clock=clock)
    inbox.offer("k", manifest)
    for chunk in chunks[:-2]:
        inbox.offer("k", chunk)

    # Execute
    early = inbox.stalled()
    clock.now = 2.0
    first = inbox.stalled()
    clock.now = 4.0
    second = inbox.stalled()
    clock.now = 6.0
    gone = inbox.stalled()

    # Assert
    missing = (len(chunks) - 2, len(chunks) - 1)
    assert early == [] and first == [("k", missing)] and second == [("k", missing)] and gone == []
    assert inbox.offer("k", chunks[-1]).message is None  # abandoned: late chunks make nothing


def test_a_redelivered_message_is_recognised_and_not_handed_on_twice():
    inbox = Inbox(max_bytes=2**20)
    (whole,) = frames_of(b"request")
    first, again = inbox.offer("k", whole), inbox.offer("k", whole)
    assert first.message == b"request" and again.message is None and again.duplicate


def test_a_manifest_over_the_limit_or_malformed_is_refused_before_anything_is_buffered():
    manifest, *_ = frames_of(bytes(5000))
    with pytest.raises(Rejected) as too_big:
        Inbox(max_bytes=4000).offer("k", manifest)
    manifest.manifest.chunk_sha256.pop()
    with pytest.raises(Rejected) as malformed:
        Inbox(max_bytes=2**20).offer("k", manifest)
    assert too_big.value.reason is Reason.RESOURCE_EXHAUSTED and "5000" in too_big.value.message
    assert malformed.value.reason is Reason.INVALID_ARGUMENT


def test_a_manifest_whose_chunks_do_not_add_up_to_its_digest_is_refused():
    manifest, *chunks = frames_of(bytes(3000))
    manifest.manifest.sha256 = hashlib.sha256(b"something else").digest()
    inbox = Inbox(max_bytes=2**20)
    inbox.offer("k", manifest)
    with pytest.raises(Rejected) as refused:
        for chunk in chunks:
            inbox.offer("k", chunk)
    assert refused.value.reason is Reason.INVALID_ARGUMENT


def test_the_outbox_answers_resends_until_it_forgets():
    # Prepare
    clock = Clock()
    outgoing = split("m1", bytes(5000), LIMIT)
    outbox = Outbox(keep_s=10.0, clock=clock)
    outbox.put("k", outgoing)

    # Execute
    some, everything = outbox.resend("k", [1, 3]), outbox.resend("k", [])
    clock.now = 11.0
    expired = outbox.resend("k", [1])

    # Assert
    assert some == [outgoing.frames[2], outgoing.frames[4]]
    assert everything == list(outgoing.frames) and expired == []


def test_a_packet_limit_too_small_for_any_data_is_refused():
    with pytest.raises(ValueError, match="raise it"):
        split("m1", bytes(5000), 80)


def test_one_sender_cannot_open_more_than_its_share_of_messages_and_no_one_more_than_the_total():
    inbox = Inbox(max_bytes=4096, max_open_per_sender=2, max_open=3)
    manifest = split("m", bytes(3000), max_payload=512).frames[0]

    def open_one(sender, message_id):
        return inbox.offer((sender, message_id), mq.Frame.FromString(manifest))

    open_one("mallory", "1")
    open_one("mallory", "2")
    with pytest.raises(Rejected, match="2 messages from this sender are being reassembled already"):
        open_one("mallory", "3")
    open_one("alice", "1")  # others still get their share ...
    with pytest.raises(Rejected, match="3 messages are being reassembled; try later"):
        open_one("bob", "1")  # ... up to the total
