"""``python -m pyrovae`` and the ``pyrovae`` script run the CLI (:func:`pyrovae.cli.main`).

Importing the CLI imports torch, which takes seconds; :func:`run` imports it inside the
same guard as the command itself, so Ctrl-C at any moment, start-up included, ends with
one line and exit status 130 rather than a traceback. (``import pyrovae`` itself is
light, see :mod:`pyrovae`, so nothing heavy runs before this guard.)
"""

import os
import signal
import sys


def run() -> None:
    """The CLI's entry point: exits with :func:`pyrovae.cli.main`'s status (130 on Ctrl-C)."""
    interrupted = []

    def on_interrupt(signum: int, frame: object) -> None:
        interrupted.append(signum)
        raise KeyboardInterrupt

    # a library imported on the way may catch everything (a bare `except:` around an
    # optional import) and swallow the KeyboardInterrupt: the flag remembers it
    previous = signal.getsignal(signal.SIGINT)
    if previous is not signal.SIG_IGN:  # (a background job ignores Ctrl-C: it stays so)
        signal.signal(signal.SIGINT, on_interrupt)
    try:
        try:
            from pyrovae.cli import main
        finally:
            signal.signal(signal.SIGINT, previous)
        if interrupted:
            raise KeyboardInterrupt
        status = main()
    except KeyboardInterrupt:
        if os.environ.get("PYROVAE_DEBUG", "") not in ("", "0"):
            raise
        command = next((a for a in sys.argv[1:] if not a.startswith("-")), "")
        print(f"\npyrovae {command}".rstrip() + ": interrupted", file=sys.stderr)
        status = 130
    sys.exit(status)


if __name__ == "__main__":
    run()
