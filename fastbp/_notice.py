"""The one-line notice shown while fastbp's kernels compile for the first time.

A newcomer's first fit compiles the kernels (5-10 s on a small machine; cached on disk
afterwards): without a word that looks like a hang. Numba announces each real compilation (not a
load from its cache) as a "numba:compile" event; the first one for a fastbp kernel prints one
line to stderr, once per process.
"""
import sys

from numba.core import event


class _Notice(event.Listener):
    shown = False

    def on_start(self, ev):
        if self.shown:
            return
        dispatcher = (ev.data or {}).get("dispatcher")
        module = getattr(getattr(dispatcher, "py_func", None), "__module__", "")
        if module.startswith("fastbp."):
            _Notice.shown = True
            print("fastbp: compiling the kernels for this machine (first use only: they are "
                  "cached on disk, and later runs start in about a second)...", file=sys.stderr,
                  flush=True)

    def on_end(self, ev):
        pass


_installed = False


def install():
    """Listen for compilations (idempotent)."""
    global _installed
    if not _installed:
        event.register("numba:compile", _Notice())
        _installed = True
