"""Imported once by the job fork server, so that every job's child process starts warm.

Each measurement runs in a child forked from a server process that has already imported torch,
fvcore and every registered architecture (a cold start costs seconds per job). The server runs
no computation, so forking it is safe.
"""

import torch  # noqa: F401

import archs
import bench.measure.flops  # noqa: F401
import bench.measure.speed  # noqa: F401
import bench.provenance  # noqa: F401

archs.list_archs()  # import the built-in families and entry-point plugins once
bench.provenance.git_commit()  # the checkout does not change during a run
