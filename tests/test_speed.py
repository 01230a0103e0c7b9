"""Latency measurement: statistics on the CPU; CUDA modes on a GPU (marker gpu)."""

import ctypes
import json
import math
import resource
import subprocess
import sys
import threading
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from bench.measure import nvml, roofline
from bench.measure.host_memory import HOST_MEMORY_CACHED, glibc, host_memory_cached
from bench.measure.latency import bare_latency, measure_latency
from bench.measure.step import ModeUnavailable, inference_step, on_device, prepare_step
from bench.measure.sweep import sweep_batches
from bench.protocol import LAYOUT_PROBE, MAX_SPREAD, MODES, SPEED, SpeedProtocol, needs_cuda
from tests.conftest import run_bench
from tests.toy_models import ToyNet

FAST = SpeedProtocol(warmup_steps=1, repeats=3, min_steps=2, min_repeat_s=0.0, max_repeat_s=1.0)


class FakeClock:
    """Stands in for `bench.measure.timer.host_clock`: it stands still until a step advances it."""

    def __init__(self) -> None:
        self.now_s = 0.0

    def __call__(self) -> float:
        return self.now_s

    def advance(self, ms: float) -> None:
        self.now_s += ms / 1000.0


@pytest.fixture
def fake_clock(monkeypatch) -> FakeClock:
    """The CPU timer reads a `FakeClock`: a step lasts what its model says, whatever the machine's load."""
    from bench.measure import timer

    clock = FakeClock()
    monkeypatch.setattr(timer, "host_clock", clock)
    return clock


class StepsOfKnownLength(ToyNet):
    """Each forward advances ``clock`` by the next of ``lengths_ms``; the last length repeats."""

    def __init__(self, clock: FakeClock, lengths_ms: list[float]) -> None:
        super().__init__(5)
        self.clock, self.lengths_ms = clock, list(lengths_ms)

    def forward(self, x):
        self.clock.advance(self.lengths_ms.pop(0) if len(self.lengths_ms) > 1 else self.lengths_ms[0])
        return super().forward(x)


def test_step_resizes_logits_to_the_input_and_takes_the_argmax():
    model = ToyNet(5).eval()
    x = torch.randn(2, 3, 32, 48)
    with torch.no_grad():
        pred = inference_step(model, x, "fp32")()
        logits = torch.nn.functional.interpolate(model(x), size=(32, 48), mode="bilinear", align_corners=False)
    assert pred.shape == (2, 32, 48)
    assert torch.equal(pred, logits.argmax(1))


def test_cpu_latency_statistics_are_consistent():
    result = measure_latency(ToyNet(5), (32, 32), device="cpu", protocol=FAST)  # on the real clock
    assert result.repeats == 3
    assert result.min_ms <= result.median_ms <= result.p90_ms
    assert result.fps == pytest.approx(1000.0 / result.median_ms)
    assert len(result.repeat_medians_ms) == 3 and result.spread >= 0
    assert result.peak_memory_mb is None and result.energy_j_per_frame is None
    assert result.host_memory == (HOST_MEMORY_CACHED if glibc() else None)


def _page_faults_of_big_tensors(times: int = 5) -> int:
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(times):
        torch.empty(2**24).fill_(1.0)  # 64 MiB, freed at once: far above glibc's default mmap threshold
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults


class _MallInfo2(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_size_t)
        for name in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks")
    ] + [("keepcost", ctypes.c_size_t)]


def _mapped_for_a_big_tensor(mib: int) -> bool:
    """Whether glibc serves an (untouched) tensor of ``mib`` MiB with a mapping of its own (hblkhd grows)."""
    mallinfo2 = glibc().mallinfo2
    mallinfo2.restype = _MallInfo2
    before = mallinfo2().hblkhd
    tensor = torch.empty(mib * 2**18)
    during = mallinfo2().hblkhd
    del tensor
    return during - before >= mib * 2**20


def _heap_behaviour() -> dict:
    """Where a big block comes from, and the page faults of five 64 MiB ones, by default, while the heap
    is kept, and after. In a fresh interpreter, whose heap no earlier test has grown: a free chunk of
    the heap as big as a block serves it whatever the thresholds, so each probe is bigger than any the
    heap held before it (the one after the timing, bigger than what the timing left there)."""
    default_mapped, default_faults = _mapped_for_a_big_tensor(512), _page_faults_of_big_tensors()
    with host_memory_cached(torch.device("cpu")) as kept:
        _page_faults_of_big_tensors(1)  # the first one grows the heap
        cached_mapped = _mapped_for_a_big_tensor(512)
        # the best of three: where the heap cannot grow in place glibc maps a block once more, a one-off
        cached_faults = min(_page_faults_of_big_tensors() for _ in range(3))
    after_mapped = _mapped_for_a_big_tensor(1024)
    return dict(
        kept=kept, default_mapped=default_mapped, cached_mapped=cached_mapped, after_mapped=after_mapped,
        default_faults=default_faults, cached_faults=cached_faults,
    )  # fmt: skip


@pytest.mark.skipif(not (glibc() and hasattr(glibc(), "mallinfo2")), reason="glibc >= 2.33's allocator")
def test_cpu_steps_reuse_the_memory_they_free_instead_of_faulting_it_in_again():
    code = "import json; from tests.test_speed import _heap_behaviour; print(json.dumps(_heap_behaviour()))"
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=Path(__file__).parents[1], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    heap = json.loads(done.stdout.splitlines()[-1])
    assert heap["kept"] == HOST_MEMORY_CACHED
    # where each block comes from, by the allocator's own count: a mapping of its own, or the heap
    assert heap["default_mapped"] and not heap["cached_mapped"]
    assert heap["after_mapped"]  # glibc's defaults again once the timing is over
    # and what that saves: the heap's pages stay mapped, a fresh mapping is faulted in at every step
    assert heap["default_faults"] >= 5 and heap["cached_faults"] * 4 < heap["default_faults"]


@pytest.mark.parametrize("mode", [m for m in MODES if m not in ("eager", "eager-fused")])
def test_every_mode_but_eager_fp32_needs_cuda(mode):
    assert needs_cuda(mode)
    with pytest.raises(ModeUnavailable, match="CUDA"):
        measure_latency(ToyNet(5), (32, 32), device="cpu", mode=mode, protocol=FAST)


def test_the_statistics_and_the_spread_flag_follow_the_timed_steps(fake_clock):
    # one warm-up step, then three repeats of two steps whose medians are 100, 100 and 103 ms
    model = StepsOfKnownLength(fake_clock, [100, 100, 100, 100, 100, 103, 103])
    result = measure_latency(model, (16, 16), device="cpu", protocol=FAST)
    assert result.steps == 2 and result.repeat_medians_ms == pytest.approx([100, 100, 103])
    assert (result.min_ms, result.median_ms, result.mean_ms) == pytest.approx((100, 100, 101))
    assert result.p90_ms == pytest.approx(103) and result.fps == pytest.approx(10.0)
    assert result.spread == pytest.approx(0.03) and result.unstable and result.throttled is False
    assert 0.01 < MAX_SPREAD < 0.03  # the flag's threshold lies between this test's two spreads
    steady = StepsOfKnownLength(fake_clock, [100, 100, 100, 100, 100, 101, 101])
    result = measure_latency(steady, (16, 16), device="cpu", protocol=FAST)
    assert result.spread == pytest.approx(0.01) and not result.unstable


def test_a_repeat_lasts_its_least_time_in_whole_steps_and_stops_adding_steps_at_its_most(fake_clock):
    def steps(length_ms, **protocol):
        model = StepsOfKnownLength(fake_clock, [length_ms])
        return measure_latency(model, (16, 16), device="cpu", protocol=replace(FAST, **protocol)).steps

    assert steps(12, min_steps=2, min_repeat_s=0.05) == 5  # 60 ms: the fewest 12 ms steps that last 50 ms
    assert steps(12, min_steps=8, min_repeat_s=0.05, max_repeat_s=0.03) == 2  # 24 ms: no more than 30 ms
    assert steps(2000, min_steps=2, max_repeat_s=1.0) == 1  # a step longer than a repeat's most: one


class OutOfMemoryFrom(ToyNet):
    """Runs out of device memory from a batch size on (what a real GPU does past its memory)."""

    def __init__(self, batch: int, error=None) -> None:
        super().__init__(5)
        self.batch = batch
        self.error = error or torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 80.00 GiB")

    def forward(self, x):
        if x.shape[0] >= self.batch:
            raise self.error
        return super().forward(x)


def test_batch_sweep_reports_images_per_second_and_stops_at_the_memory_limit():
    full = sweep_batches(ToyNet(5), (32, 32), device="cpu", mode="eager", protocol=FAST, batches=(1, 2, 4))
    assert [p["batch"] for p in full.points] == [1, 2, 4] and full.stopped is None
    for point in full.points:
        assert point["images_s"] == pytest.approx(1000.0 * point["batch"] / point["median_ms"])
    best = max(full.points, key=lambda p: p["images_s"])
    assert (full.best_batch, full.images_s) == (best["batch"], best["images_s"])
    cut = sweep_batches(OutOfMemoryFrom(4), (32, 32), device="cpu", mode="eager", protocol=FAST, batches=(1, 2, 4, 8))
    assert [p["batch"] for p in cut.points] == [1, 2] and cut.stopped == "out of memory at batch 4"
    with pytest.raises(torch.cuda.OutOfMemoryError, match="not even batch 1"):
        sweep_batches(OutOfMemoryFrom(1), (32, 32), device="cpu", mode="eager", protocol=FAST, batches=(1, 2))
    # an allocation failing inside a CUDA-graph capture can surface as an invalidated capture
    invalidated = RuntimeError("CUDA error: operation failed due to a previous error during capture")

    def sweep(model):
        return sweep_batches(model, (32, 32), device="cpu", mode="eager", protocol=FAST, batches=(1, 2, 4))

    cut = sweep(OutOfMemoryFrom(2, invalidated))
    assert [p["batch"] for p in cut.points] == [1]
    assert cut.stopped.startswith("the CUDA-graph capture failed at batch 2")
    with pytest.raises(RuntimeError, match="previous error during capture"):  # batch 1 must capture: a real defect
        sweep(OutOfMemoryFrom(1, invalidated))
    with pytest.raises(ValueError, match="a bug"):  # anything else is a defect too, reported as it is
        sweep(OutOfMemoryFrom(2, ValueError("a bug")))


def test_batch_sweep_stops_before_a_tensor_passes_32_bit_indexing():
    # 2 x 2^19 classes x 32 x 32 is 2^30 elements; batch 4 makes 2^31, one more than 32-bit indexing reaches
    cut = sweep_batches(
        ToyNet(5), (32, 32), device="cpu", mode="eager", protocol=FAST, batches=(1, 2, 4, 8), num_classes=2**19
    )
    assert [p["batch"] for p in cut.points] == [1, 2]
    assert cut.stopped == "batch 4: its 4x524288x32x32 resized logits would pass 2^31 elements (32-bit kernel indexing)"
    # a kernel that refuses another tensor of the step ends the sweep with the points measured before it
    refused = RuntimeError("upsample_bilinear2d_nhwc only supports output tensors with less than INT_MAX elements")
    cut = sweep_batches(
        OutOfMemoryFrom(4, refused), (32, 32), device="cpu", mode="eager", protocol=FAST, batches=(1, 2, 4)
    )
    assert [p["batch"] for p in cut.points] == [1, 2]
    assert cut.stopped.startswith("a kernel's 32-bit indexing at batch 4")
    with pytest.raises(RuntimeError, match="INT_MAX"):  # batch 1 must run: a real defect
        sweep_batches(OutOfMemoryFrom(1, refused), (32, 32), device="cpu", mode="eager", protocol=FAST, batches=(1, 2))


def test_a_sweep_job_is_recorded_by_bench_run(tmp_path):
    proc = run_bench(
        "run", "--plugin", "tests.toy_models", "--arch", "toy-w4", "--dataset", "ade20k", "--measure", "sweep",
        "--results", str(tmp_path), "--no-report",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    (record,) = [json.loads(line) for line in next(tmp_path.glob("*/records.jsonl")).read_text().splitlines()]
    assert record["kind"] == "sweep" and record["mode"] == "eager" and record["status"] == "ok"
    assert [p["batch"] for p in record["value"]["points"]][:2] == [1, 2] and "best batch" in proc.stderr


def test_throttling_is_a_slowdown_reason_or_a_dropped_clock():
    assert nvml.throttled({"sm_clock_mhz": 1980}, {"sm_clock_mhz": 1700, "clock_event_reasons": 0})
    assert nvml.throttled({"sm_clock_mhz": 1980}, {"sm_clock_mhz": 1980, "clock_event_reasons": 0x20})  # thermal
    assert not nvml.throttled({"sm_clock_mhz": 1980}, {"sm_clock_mhz": 1965, "clock_event_reasons": 0x1})  # idle
    assert not nvml.throttled({}, {})  # no NVML: nothing to say
    # a power cap that came and went during the loop: only the cumulative counter saw it
    idle_after = {"sm_clock_mhz": 1980, "clock_event_reasons": 0x1}
    assert nvml.throttled({"sm_clock_mhz": 1980, "power_violation_ns": 10}, {**idle_after, "power_violation_ns": 25})
    steady = {"sm_clock_mhz": 1980, "thermal_violation_ns": 7}
    assert not nvml.throttled(steady, {**idle_after, "thermal_violation_ns": 7})
    # given the loop's length, a cap counts when it held the clocks down for more than 1% of it
    capped = {"sm_clock_mhz": 1980, "power_violation_ns": 0}
    assert nvml.throttled(capped, {**idle_after, "power_violation_ns": 131_000_000}, loop_s=2.5)
    assert not nvml.throttled(capped, {**idle_after, "power_violation_ns": 14_000_000}, loop_s=2.5)
    assert nvml.throttled(capped, {**idle_after, "power_violation_ns": 14_000_000})  # length unknown: any cap


class _FakeNVML:
    """The two NVML energy queries, each a value or unsupported (None raises, as NVML's NotSupported)."""

    def __init__(self, energy_mj, power_mw):
        self.energy_mj, self.power_mw = list(energy_mj), power_mw
        self.power_read_by_sampler = threading.Event()  # set at a power reading from a thread other than the test's

    def nvmlDeviceGetTotalEnergyConsumption(self, h):
        if not self.energy_mj:
            raise RuntimeError("NVML_ERROR_NOT_SUPPORTED")
        return self.energy_mj.pop(0)

    def nvmlDeviceGetPowerUsage(self, h):
        if self.power_mw is None:
            raise RuntimeError("NVML_ERROR_NOT_SUPPORTED")
        if threading.current_thread() is not threading.main_thread():
            self.power_read_by_sampler.set()
        return self.power_mw


def test_energy_from_the_counter_else_sampled_power_else_none(monkeypatch):
    monkeypatch.setattr(nvml, "pynvml", _FakeNVML([1_000_000, 1_250_000], 300_000))
    assert nvml.EnergyMeter("h").start().stop().joules == pytest.approx(250.0)  # the counter's mJ difference
    sampled = _FakeNVML([], 300_000)
    monkeypatch.setattr(nvml, "pynvml", sampled)
    meter = nvml.EnergyMeter("h").start()
    assert sampled.power_read_by_sampler.wait(timeout=120)  # stop() joins the thread: its reading is kept
    energy = meter.stop()
    assert energy.watts == pytest.approx(300.0)  # 300 W sampled while it ran
    monkeypatch.setattr(nvml, "pynvml", _FakeNVML([], None))  # a MIG slice: neither can be read
    meter = nvml.EnergyMeter("h").start()
    assert meter._thread is None and meter.stop() is None
    assert nvml.EnergyMeter(None).start().stop() is None  # no NVML handle


def test_roofline_arithmetic():
    assert roofline.achieved_tflops(8.4e9, 2.3) == pytest.approx(7.304, rel=1e-3)  # SegFormer-B0-like
    assert roofline.peak_key("fp32", True) == "matmul_tf32_tflops"
    assert roofline.peak_key("fp32", False) == "matmul_fp32_tflops"
    assert roofline.peak_key("bf16", None) == "matmul_bf16_tflops"
    assert roofline.share_of_peak(80.0, roofline.ceiling_tflops({"matmul_fp16_tflops": 800.0}, "fp16", None)) == 0.1
    assert roofline.share_of_peak(80.0, roofline.ceiling_tflops(None, "fp16", None)) is None
    # fp32: convolutions at the TF32 ceiling (cuDNN's default), matmuls and attention at the fp32 one
    peaks = {"matmul_tf32_tflops": 400.0, "matmul_fp32_tflops": 50.0}
    split = {"conv": 3e9, "addmm": 1.5e9, "scaled_dot_product_attention": 0.5e9}
    assert roofline.ceiling_tflops(peaks, "fp32", True, False, split) == pytest.approx(5 / (3 / 400 + 2 / 50))
    assert roofline.ceiling_tflops(peaks, "fp32", True, True, split) == pytest.approx(400.0)
    assert roofline.ceiling_tflops(peaks, "fp32", False, None, split) == pytest.approx(50.0)
    assert roofline.ceiling_tflops(peaks, "fp32", True, None, None) == 400.0  # no split: one ceiling for all
    assert roofline.ceiling_tflops({"matmul_tf32_tflops": 400.0}, "fp32", True, False, split) is None
    assert roofline.launch_overhead_share(10.0, 4.0) == pytest.approx(0.6)
    assert roofline.launch_overhead_share(10.0, None) is None
    assert roofline.bound(0.6) == "launch" and roofline.bound(0.2) == "GPU"
    with pytest.raises(ValueError, match="CUDA"):
        roofline.measure_peaks("cpu")


@pytest.mark.gpu
@pytest.mark.parametrize("mode", list(MODES))
def test_cuda_modes_measure_and_graph_replays_the_same_prediction(mode):
    model = ToyNet(5).eval()
    result = measure_latency(model, (64, 64), device="cuda", mode=mode, protocol=SPEED["cuda"])
    assert result.median_ms > 0 and result.peak_memory_mb > 0
    if MODES[mode]["channels_last"] == "auto":  # both layouts probed, the faster kept
        assert set(result.layout_ms) == {"channels_last", "contiguous"}
        assert result.channels_last == (result.layout_ms["channels_last"] <= result.layout_ms["contiguous"])
    else:
        assert result.layout_ms is None and result.channels_last == MODES[mode]["channels_last"]
    if MODES[mode]["fused"] and MODES[mode]["precision"] != "fp32":  # the convolutions' weights stored in fp16
        assert result.inference_form["precast_parameters"] == 6
    x = torch.randn(1, 3, 64, 64, device="cuda")
    with torch.no_grad():
        assert inference_step(model.cuda().float(), x, "fp32")().shape == (1, 64, 64)


@pytest.mark.gpu
def test_cuda_sweep_and_ceilings():
    sweep = sweep_batches(ToyNet(5), (64, 64), device="cuda", mode="graph", protocol=SPEED["cuda"], batches=(1, 2, 4))
    assert [p["batch"] for p in sweep.points] == [1, 2, 4] and all(p["peak_memory_mb"] > 0 for p in sweep.points)
    assert isinstance(sweep.channels_last, bool) and set(sweep.layout_ms) == {"channels_last", "contiguous"}
    peaks = roofline.measure_peaks("cuda", n=2048, copy_bytes=2**26)
    assert set(peaks) == {f"matmul_{p}_tflops" for p in ("fp32", "tf32", "fp16", "bf16")} | {"copy_tb_s"}
    assert all(v > 0 for v in peaks.values())


@pytest.mark.gpu
def test_compile_time_is_recorded_apart_from_the_latency():
    result = measure_latency(ToyNet(5), (64, 64), device="cuda", mode="compile", protocol=SPEED["cuda"])
    assert result.compile_s > 0 and result.median_ms > 0


@pytest.mark.gpu
def test_the_bare_loop_times_the_same_callable():
    ours = measure_latency(ToyNet(5), (64, 64), device="cuda", mode="graph", protocol=SPEED["cuda"])
    bare = bare_latency(
        ToyNet(5), (64, 64), device="cuda", mode="graph", protocol=SPEED["cuda"], steps=ours.steps,
        channels_last=ours.channels_last,
    )  # fmt: skip
    assert bare > 0 and ours.mean_ms > 0


def test_the_bare_loop_needs_cuda():
    with pytest.raises(ModeUnavailable, match="CUDA"):
        bare_latency(ToyNet(5), (32, 32), device="cpu", mode="eager", protocol=FAST, steps=2)


def test_library_workspace_failures_count_as_out_of_memory():
    from bench.errors import is_out_of_memory

    assert is_out_of_memory(RuntimeError("cuDNN error: CUDNN_STATUS_ALLOC_FAILED"))
    assert is_out_of_memory(RuntimeError("CUDA error: CUBLAS_STATUS_ALLOC_FAILED when calling `cublasCreate(handle)`"))
    assert not is_out_of_memory(RuntimeError("cuDNN error: CUDNN_STATUS_NOT_SUPPORTED"))
    try:  # an error raised while handling (or from) an out-of-memory one
        try:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory")
        except RuntimeError:
            raise RuntimeError("CUDA error: operation not permitted when stream is capturing")  # noqa: B904
    except RuntimeError as chained:
        assert is_out_of_memory(chained)


class SlowInLayout(ToyNet):
    """A step lasts ``fast_ms`` on ``clock``, ``slow_ms`` in one memory layout; notes the layout of every input."""

    def __init__(self, clock: FakeClock, slow_channels_last: bool, fast_ms: float = 12.0, slow_ms: float = 16.0):
        super().__init__(5)
        self.clock, self.slow_channels_last = clock, slow_channels_last
        self.fast_ms, self.slow_ms = fast_ms, slow_ms
        self.seen: list[tuple[int, bool]] = []

    def forward(self, x):
        channels_last = x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()
        self.seen.append((x.shape[0], channels_last))
        self.clock.advance(self.slow_ms if channels_last == self.slow_channels_last else self.fast_ms)
        return super().forward(x)


def probe_steps(step_ms: float) -> int:
    """The steps `LAYOUT_PROBE` runs of a step of ``step_ms``: its untimed ones, then at least its steps and seconds."""
    timed = max(LAYOUT_PROBE.min_steps, math.ceil(LAYOUT_PROBE.min_s * 1000.0 / step_ms))
    return LAYOUT_PROBE.warmup_steps + timed


@pytest.fixture
def auto_layout_mode(monkeypatch):
    """An fp32 eager mode whose layout is "auto", as graph's is: the probe runs on a CPU too."""
    monkeypatch.setitem(MODES, "eager-auto", {**MODES["eager"], "channels_last": "auto"})
    return "eager-auto"


@pytest.mark.parametrize("slow_channels_last", [True, False])
def test_an_auto_layout_mode_times_both_layouts_and_keeps_the_faster(fake_clock, auto_layout_mode, slow_channels_last):
    model = SlowInLayout(fake_clock, slow_channels_last)
    result = measure_latency(model, (16, 16), device="cpu", mode=auto_layout_mode, protocol=FAST)
    assert result.channels_last is (not slow_channels_last)
    slow, fast = ("channels_last", "contiguous") if slow_channels_last else ("contiguous", "channels_last")
    assert result.layout_ms == {slow: pytest.approx(16.0), fast: pytest.approx(12.0)}
    # channels_last probed first, then contiguous, each as long as the probe says for its step's
    # length; then every timed step in the layout kept, and the weights with it
    step_ms = {True: 16.0 if slow_channels_last else 12.0, False: 12.0 if slow_channels_last else 16.0}
    timed = FAST.warmup_steps + FAST.repeats * result.steps
    expected = (
        [True] * probe_steps(step_ms[True]) + [False] * probe_steps(step_ms[False]) + [result.channels_last] * timed
    )
    assert [layout for _, layout in model.seen] == expected
    assert model.down.weight.is_contiguous(memory_format=torch.channels_last) == result.channels_last
    assert result.median_ms == pytest.approx(12.0)


def test_a_held_layout_is_not_probed_and_a_fixed_mode_has_no_probe(fake_clock, auto_layout_mode):
    model = SlowInLayout(fake_clock, slow_channels_last=False)
    held = measure_latency(model, (16, 16), device="cpu", mode=auto_layout_mode, protocol=FAST, channels_last=False)
    assert held.channels_last is False and held.layout_ms is None and held.median_ms == pytest.approx(16.0)
    assert {layout for _, layout in model.seen} == {False}
    plain = measure_latency(StepsOfKnownLength(fake_clock, [12.0]), (16, 16), device="cpu", protocol=FAST)
    assert plain.channels_last is False and plain.layout_ms is None


def test_a_sweep_probes_the_layout_at_its_first_batch_and_holds_it(fake_clock, auto_layout_mode):
    model = SlowInLayout(fake_clock, slow_channels_last=True)
    sweep = sweep_batches(model, (16, 16), device="cpu", mode=auto_layout_mode, protocol=FAST, batches=(1, 2, 4))
    assert sweep.channels_last is False and set(sweep.layout_ms) == {"channels_last", "contiguous"}
    assert {layout for batch, layout in model.seen if batch > 1} == {False}


@pytest.fixture
def captured_on_cpu(monkeypatch):
    """A graph mode with an "auto" layout that runs on a CPU: `capture_graph` stands in for the CUDA-graph capture (a
    replay marked ``captured``). Returns (mode, a list with one entry per capture)."""
    from bench.measure import step

    captures: list = []

    def capture(step, warmup):
        def replay():
            return step()

        replay.captured = True
        for _ in range(warmup):
            step()
        captures.append(step)
        return replay

    monkeypatch.setattr(step, "capture_graph", capture)
    monkeypatch.setattr(step, "needs_cuda", lambda mode: False)
    monkeypatch.setitem(MODES, "graph-cpu", {**MODES["eager"], "cuda_graph": True, "channels_last": "auto"})
    return "graph-cpu", captures


@pytest.mark.parametrize("slow_channels_last, captures", [(True, 2), (False, 3)])
def test_a_probed_graph_mode_captures_each_layout_once_and_the_kept_one_again_only_when_needed(
    fake_clock, captured_on_cpu, slow_channels_last, captures
):
    mode, done = captured_on_cpu
    model = SlowInLayout(fake_clock, slow_channels_last)
    with torch.no_grad(), on_device(torch.device("cpu")):
        prepared = prepare_step(model, (16, 16), device=torch.device("cpu"), mode=mode, protocol=FAST)
    # channels_last is probed first: keeping it means capturing it again; keeping NCHW reuses the last capture
    assert prepared.channels_last is (not slow_channels_last) and len(done) == captures
    assert getattr(prepared.fn, "captured", False)
    model.seen.clear()
    prepared.fn()
    assert model.seen == [(1, prepared.channels_last)]


def test_a_probed_graph_mode_profiled_uncaptured_probes_captured_then_runs_uncaptured(fake_clock, captured_on_cpu):
    mode, done = captured_on_cpu
    model = SlowInLayout(fake_clock, slow_channels_last=True)
    with torch.no_grad(), on_device(torch.device("cpu")):
        prepared = prepare_step(model, (16, 16), device=torch.device("cpu"), mode=mode, protocol=FAST, capture=False)
    assert prepared.channels_last is False and len(done) == 2  # both layouts timed as replayed
    assert not getattr(prepared.fn, "captured", False)  # the kept layout's step itself, for the profiler
    model.seen.clear()
    prepared.fn()
    assert model.seen == [(1, False)]
