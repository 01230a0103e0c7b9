"""Measurements: parameters, FLOPs (fvcore), speed (CUDA events / CPU clock), NVML telemetry."""
