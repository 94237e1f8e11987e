"""Children that take Ctrl-C as a terminal's foreground job does.

A shell without job control starts a background command with SIGINT and SIGQUIT ignored (POSIX,
Shell Command Language 2.11), and the ignore is inherited by everything it starts; CPython then
installs no KeyboardInterrupt handler (``signal`` module docs: SIGINT becomes KeyboardInterrupt only
"if the parent process has not changed it"). A suite started that way (``nohup pytest &``, a CI
runner's background step) would see every Ctrl-C test fail although the product is fine -- the
2026-12-05 idle run lost two tests to it. Tests that send SIGINT start their child with
``preexec_fn=sigint_as_in_a_terminal``: SIGINT back at its default, as a user's terminal gives it.
"""

from __future__ import annotations

import signal

__all__ = ["sigint_as_in_a_terminal"]


def sigint_as_in_a_terminal() -> None:
    """``preexec_fn`` for ``subprocess``: reset SIGINT to ``SIG_DFL`` in the child before it execs."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
