"""Many SFTP directory listings in a few round trips.

paramiko's ``listdir_attr`` waits for each of its requests (OPENDIR, READDIR until EOF, CLOSE): about four
round trips per directory, which makes a pass over 1,000 runs cost 4,000 round trips. The SFTP protocol
lets a client keep many requests in flight, answered by request id; this module sends the OPENDIR of a
whole batch of directories at once, then their READDIRs, then their CLOSEs.

It uses paramiko's request machinery (request numbering, ``_expecting``, ``_read_response``: the same
one its file prefetch uses), which is not public API: :func:`pipelined_supported` checks for it, and callers
fall back to ``listdir_attr`` when it is missing.
"""
from __future__ import annotations

import struct
from typing import Dict, List, NamedTuple, Sequence, Tuple, Union

import paramiko
from paramiko.sftp import (
    CMD_CLOSE,
    CMD_DATA,
    CMD_HANDLE,
    CMD_NAME,
    CMD_OPENDIR,
    CMD_READ,
    CMD_READDIR,
    CMD_STATUS,
    SFTP_EOF,
)
from paramiko.sftp_attr import SFTPAttributes

__all__ = ["pipelined_supported", "listdirs", "read_range"]

BATCH = 256  # directories in flight at once: bounded memory and window use on both sides

Listing = Union[List[SFTPAttributes], IOError]


def pipelined_supported(sftp: paramiko.SFTPClient) -> bool:
    return all(hasattr(sftp, name) for name in ("_lock", "_expecting", "request_number", "_write_all",
                                                  "_read_response", "_convert_status"))


class _Replies:
    """Collects the answers to one round of requests (paramiko calls ``_async_response``)."""

    def __init__(self) -> None:
        self.got: Dict[int, Tuple[int, paramiko.Message]] = {}

    def _async_response(self, t: int, msg: paramiko.Message, num: int) -> None:
        self.got[num] = (t, msg)


def _send(sftp: paramiko.SFTPClient, replies: _Replies, requests: Sequence[Tuple[int, tuple]]) -> List[int]:
    """Send (command, args) requests in one channel write; their request numbers, in order.

    paramiko's ``_async_request`` writes each request on its own (one socket send each); numbering and
    framing here are paramiko's, as in ``_async_request`` and ``_send_packet``. An argument is an int
    (uint32), an :class:`_Int64`, or a string/bytes."""
    nums: List[int] = []
    frames: List[bytes] = []
    with sftp._lock:  # type: ignore[attr-defined]  # private
        for command, args in requests:
            msg = paramiko.Message()
            msg.add_int(sftp.request_number)
            for arg in args:
                if isinstance(arg, _Int64):
                    msg.add_int64(arg.value)
                elif isinstance(arg, int):
                    msg.add_int(arg)
                else:
                    msg.add_string(arg)
            num = sftp.request_number
            sftp._expecting[num] = replies  # type: ignore[attr-defined]  # private
            sftp.request_number += 1
            nums.append(num)
            packet = msg.asbytes()
            frames.append(struct.pack(">I", len(packet) + 1) + bytes((command,)) + packet)
    sftp._write_all(b"".join(frames))  # type: ignore[attr-defined]  # private
    return nums


class _Int64(NamedTuple):
    value: int


def _round(sftp: paramiko.SFTPClient,
           requests: Sequence[Tuple[int, int, tuple]]) -> Dict[int, Tuple[int, paramiko.Message]]:
    """Send every (key, command, args) request, then read until each one has its answer: key -> reply."""
    replies = _Replies()
    nums = _send(sftp, replies, [(command, args) for _, command, args in requests])
    keys = {num: key for num, (key, _, _) in zip(nums, requests)}
    while len(replies.got) < len(keys):
        sftp._read_response()  # type: ignore[attr-defined]  # private; one packet, SSHException if the link drops
    return {keys[num]: reply for num, reply in replies.got.items()}


def read_range(sftp: paramiko.SFTPClient, handle: bytes, offset: int, length: int,
               chunk_bytes: int = 32768, in_flight: int = 64) -> bytes:
    """``length`` bytes of an open file from ``offset`` (fewer at its end), ``in_flight`` READs of
    ``chunk_bytes`` outstanding at a time: no thread, no request left behind, EOF answered as EOF."""
    pending = [(start, min(chunk_bytes, offset + length - start))
               for start in range(offset, offset + length, chunk_bytes)]
    pending.reverse()                   # pop() from the end gives ascending offsets
    got: Dict[int, bytes] = {}
    eof_at = offset + length
    replies = _Replies()
    asked: Dict[int, Tuple[int, int]] = {}   # request number -> (offset, size)
    while pending or asked:
        batch: List[Tuple[int, int]] = []
        while pending and len(asked) + len(batch) < in_flight:
            batch.append(pending.pop())
        if batch:
            nums = _send(sftp, replies, [(CMD_READ, (handle, _Int64(start), size)) for start, size in batch])
            asked.update(zip(nums, batch))
        while not replies.got:
            sftp._read_response()  # type: ignore[attr-defined]  # private
        for num, (t, msg) in list(replies.got.items()):
            del replies.got[num]
            start, size = asked.pop(num)
            if t == CMD_DATA:
                data = msg.get_string()
                got[start] = data
                if 0 < len(data) < size:   # a short read that is not EOF: ask for the rest
                    pending.append((start + len(data), size - len(data)))
                elif not data:
                    eof_at = min(eof_at, start)
            elif t == CMD_STATUS:
                err = _status_error(sftp, msg)
                if not isinstance(err, _EofError):
                    raise err
                eof_at = min(eof_at, start)
            else:
                raise OSError(f"unexpected SFTP reply {t} to READ")
    out: List[bytes] = []
    position = offset
    while position < eof_at and position in got:
        out.append(got[position])
        position += len(got[position])
    return b"".join(out)[: eof_at - offset]


class _EofError(IOError):
    pass


def _status_error(sftp: paramiko.SFTPClient, msg: paramiko.Message) -> IOError:
    try:
        sftp._convert_status(msg)  # type: ignore[attr-defined]  # private
    except EOFError as err:
        return _EofError(str(err))
    except OSError as err:
        return err
    return OSError("unexpected OK status")


def listdirs(sftp: paramiko.SFTPClient, paths: Sequence[str]) -> Dict[str, Listing]:
    """``listdir_attr`` of every path (without ``.`` and ``..``), or the IOError the server gave for it."""
    out: Dict[str, Listing] = {}
    for start in range(0, len(paths), BATCH):
        out.update(_listdirs_batch(sftp, paths[start:start + BATCH]))
    return out


def _listdirs_batch(sftp: paramiko.SFTPClient, paths: Sequence[str]) -> Dict[str, Listing]:
    out: Dict[str, Listing] = {}
    handles: Dict[int, bytes] = {}
    for i, (t, msg) in _round(sftp, [(i, CMD_OPENDIR, (p,)) for i, p in enumerate(paths)]).items():
        if t == CMD_HANDLE:
            handles[i] = msg.get_binary()
            out[paths[i]] = []
        elif t == CMD_STATUS:
            out[paths[i]] = _status_error(sftp, msg)
        else:
            out[paths[i]] = OSError(f"unexpected SFTP reply {t} to OPENDIR")
    reading = dict(handles)
    # A dropped link raises out of _round (SSHException, timeout): the handles died with the session.
    while reading:
        replies = _round(sftp, [(i, CMD_READDIR, (h,)) for i, h in reading.items()])
        for i, (t, msg) in replies.items():
            if t == CMD_NAME:
                entries = out[paths[i]]
                assert isinstance(entries, list)
                for _ in range(msg.get_int()):
                    filename = msg.get_text()
                    longname = msg.get_text()
                    attr = SFTPAttributes._from_msg(msg, filename, longname)  # type: ignore[attr-defined]  # private
                    if filename not in (".", ".."):
                        entries.append(attr)
                continue
            del reading[i]
            if t == CMD_STATUS:
                code = msg.get_int()
                if code != SFTP_EOF:
                    out[paths[i]] = OSError(f"reading the directory failed (SFTP status {code})")
            else:
                out[paths[i]] = OSError(f"unexpected SFTP reply {t} to READDIR")
    if handles:
        _round(sftp, [(i, CMD_CLOSE, (h,)) for i, h in handles.items()])
    return out
