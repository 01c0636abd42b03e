"""SIGTERM and SIGHUP end a run the way Ctrl-C does: as an exception, so that every file is cleaned up.

By default these signals kill Python on the spot, skipping the with-blocks and finally clauses that remove a
half-written output. `terminations_raise()` makes them raise `Terminated` (a KeyboardInterrupt, which the code
already treats as "stop and clean up") in the process that installed it; forked workers keep the default.
A SIGKILL cannot be caught at all: the image writer keeps files under construction unnamed for that case.

Once a stopped run has cleaned up, `leave(status)` ends the process: a reading or computing thread of the
run may still be inside the libraries' C++ code (a network, a decoder), and finalising the interpreter
around it aborts the process ("terminate called without an active exception", status 134).
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager

# SIGHUP: the terminal was closed (or the session ended); it does not exist on Windows
SIGNALS = tuple(getattr(signal, name) for name in ("SIGTERM", "SIGHUP") if hasattr(signal, name))


class Terminated(KeyboardInterrupt):
    """The process was asked to stop by `signum`; the conventional exit status is 128 + signum."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


@contextmanager
def terminations_raise() -> Iterator[None]:
    """Within the block, SIGTERM and SIGHUP raise Terminated in this process (main thread only).

    After the first one, further SIGTERM and SIGHUP are ignored so that they cannot cut the clean-up short;
    SIGKILL still ends a stuck process. Elsewhere than in the main thread this does nothing.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    owner = os.getpid()

    def handle(signum, frame):
        if os.getpid() != owner:  # a forked worker: die as it would have without us
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        for other in previous:
            signal.signal(other, signal.SIG_IGN)
        raise Terminated(signum)

    # a signal ignored on purpose (nohup ignores SIGHUP) stays ignored
    previous = {
        signum: signal.signal(signum, handle)
        for signum in SIGNALS
        if signal.getsignal(signum) is not signal.SIG_IGN
    }
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


STOPPED = (130, *(128 + signum for signum in SIGNALS))  # the exit statuses of a run stopped by a signal


def leave(status: int) -> None:
    """End the process with `status`. After a stop (a status in STOPPED) with other threads still running,
    without finalising the interpreter (`os._exit`, once stdout and stderr are flushed): the clean-up has
    run by then, as the exception unwound. Otherwise as `sys.exit` does."""
    if status in STOPPED and threading.active_count() > 1:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError):  # a closed pipe or stream: nothing more can be said there
                pass
        os._exit(status)
    sys.exit(status)
