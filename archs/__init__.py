"""segbench architectures: the registry and every built-in family (nothing about measuring)."""

from archs.base import (
    ArchSpec,
    CheckpointFormat,
    Evaluation,
    Published,
    UnknownArchError,
    Weights,
    build,
    get_spec,
    import_models,
    list_archs,
    register,
)

list = list_archs

__all__ = [
    "ArchSpec",
    "CheckpointFormat",
    "Evaluation",
    "Published",
    "UnknownArchError",
    "Weights",
    "build",
    "get_spec",
    "import_models",
    "list",
    "list_archs",
    "register",
]
