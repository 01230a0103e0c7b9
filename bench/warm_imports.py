"""Imported once by the job fork server, so that every job's child process starts warm.

Each measurement runs in a child forked from a server process that has already imported torch,
fvcore and every registered architecture (a cold start costs seconds per job). The server runs
no computation, so forking it is safe.

Ctrl-C belongs to the run: the server, and so every job it forks, ignores SIGINT (CPython's fork
server does so only after its imports, which a Ctrl-C in the first seconds would end with a
traceback), and the run stops its jobs itself.
"""

import signal

signal.signal(signal.SIGINT, signal.SIG_IGN)

import torch  # noqa: E402, F401

import archs  # noqa: E402
import bench.measure.flops  # noqa: E402
import bench.measure.latency  # noqa: E402
import bench.measure.sweep  # noqa: E402
import bench.provenance  # noqa: E402

archs.list_archs()  # import the built-in families and entry-point plugins once
bench.provenance.git_commit()  # the checkout does not change during a run
