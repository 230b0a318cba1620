"""Keep mediapipe's C++ log lines (TFLite, glog, absl) off the terminal.

mediapipe 0.10.21 writes them from its graph threads straight to file descriptor 2, some of them after the
call that caused them returned and before ``absl::InitializeLog`` (so no log level reaches them). So the
descriptor itself is filtered: it is pointed at a pipe whose reader thread forwards everything to the real
stderr except complete lines in those formats. Python's own output (messages, progress bars, tracebacks)
passes through unchanged; at exit the original descriptor is restored and the pipe drained.
"""
from __future__ import annotations

import atexit
import os
import re
import threading

#: Lines mediapipe's native code prints: absl/glog ``W0000 00:00:1796171299.424576   24074 file.cc:114] ...``,
#: TFLite's delegate notice and absl's pre-initialisation banner.
NATIVE_LINE = re.compile(
    rb"^(?:[IWEF]\d{4} \d\d:\d\d:[\d.]+ +\d+ [^ \]]+:\d+\] .*"
    rb"|INFO: Created TensorFlow Lite XNNPACK delegate for CPU\."
    rb"|WARNING: All log messages before absl::InitializeLog\(\) is called are written to STDERR)\r?$")
_PREFIX = re.compile(rb"^(?:[IWEF]\d{0,4}(?: |$)|I(?:N(?:F(?:O(?::.*)?)?)?)?$|W(?:A(?:R(?:N(?:I(?:N(?:G(?::.*)?)?)?)?)?)?)?$)")
_installed: dict[str, object] = {}
_lock = threading.Lock()


def filter_chunk(pending: bytes, chunk: bytes) -> tuple[bytes, bytes]:
    """``(to_forward, still_pending)`` for new data: complete native log lines are dropped; a partial last
    line is held back only while it could still become one (so progress bars are not delayed)."""
    data = pending + chunk
    *lines, rest = data.split(b"\n")
    out = b"".join(line + b"\n" for line in lines if not NATIVE_LINE.match(line))
    if rest and not _PREFIX.match(rest):
        return out + rest, b""
    return out, rest


def install() -> None:
    """Filter descriptor 2 for the rest of the process (idempotent)."""
    with _lock:
        if _installed:
            return
        real = os.dup(2)
        read_end, write_end = os.pipe()
        os.dup2(write_end, 2)
        os.close(write_end)

        def forward() -> None:
            pending = b""
            while chunk := os.read(read_end, 65536):
                out, pending = filter_chunk(pending, chunk)
                if out:
                    os.write(real, out)
            if pending and not NATIVE_LINE.match(pending):
                os.write(real, pending)
            os.close(read_end)

        thread = threading.Thread(target=forward, name="native-stderr-filter", daemon=True)
        thread.start()
        _installed.update(real=real, thread=thread)
        atexit.register(_restore)


def _restore() -> None:
    """Point descriptor 2 back at the real stderr; the pipe then ends and its reader forwards what is left."""
    with _lock:
        if not _installed:
            return
        import sys

        sys.stderr.flush()
        os.dup2(_installed["real"], 2)  # closes the last write end of the pipe: the reader sees EOF
        _installed["thread"].join(timeout=5)
        _installed.clear()
