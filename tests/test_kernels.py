"""SegFormer's fused Triton kernels (`archs.kernels`) against the PyTorch operators they replace.

Without a GPU the kernels run under Triton's interpreter, in a child process started with
``TRITON_INTERPRET=1`` (the interpreter is chosen when the kernels are defined); on a GPU
(marker ``gpu``) they run compiled, eagerly and replayed from a CUDA graph.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

import archs
from archs import kernels
from archs.backbones.mit import MIT_CONFIGS

needs_triton = pytest.mark.skipif(kernels.triton is None, reason="this torch build has no Triton")


def _reference_ln(x, branch, norm):
    total = x + branch if branch is not None else x
    return total, norm(total)


def _random_norm(channels: int) -> torch.nn.LayerNorm:
    norm = torch.nn.LayerNorm(channels)
    torch.nn.init.normal_(norm.weight)
    torch.nn.init.normal_(norm.bias)
    return norm


def _checks() -> dict:
    """Run in the interpreter's child process: the measurements the test asserts on."""
    torch.manual_seed(0)
    out: dict = {"interpreted": kernels._INTERPRETER, "active_with_autograd": kernels.active(torch.randn(2, 3))}
    with torch.no_grad():
        # (rows, channels) not multiples of the blocks; channels not a power of two
        cases = (
            ("c160_fp32", 160, torch.float32, torch.float32),
            ("c64_fp16", 64, torch.float32, torch.float16),  # autocast's: an fp32 stream, an fp16 branch
            ("c64_half", 64, torch.float16, torch.float16),  # a model in half precision
        )
        for name, channels, dtype, branch_dtype in cases:
            norm = _random_norm(channels).to(dtype)
            # in half precision, near 1000 (fp16 spacing 0.5 there): a sum left unrounded moves the norm by ~0.1
            x = (torch.randn(2, 77, channels) + (1000.0 if dtype == torch.float16 else 0.0)).to(dtype)
            branch = torch.randn(2, 77, channels).to(branch_dtype)
            total, y = kernels.add_layer_norm(x, branch, norm, feeds_matmul=True)
            ref_total, ref_y = _reference_ln(x, branch, norm)
            out[f"sum_exact_{name}"] = bool(torch.equal(total, ref_total))
            out[f"ln_err_{name}"] = (y - ref_y).abs().max().item()
            _, alone = kernels.add_layer_norm(x, None, norm, feeds_matmul=False)
            out[f"ln_alone_err_{name}"] = (alone - norm(x)).abs().max().item()
            skipped, y2 = kernels.add_layer_norm(x, branch, norm, feeds_matmul=True, keep_sum=False)
            out[f"no_sum_{name}"] = skipped is None and bool(torch.equal(y2, y))
        for channels, (h, w) in ((40, (5, 7)), (130, (3, 9))):  # one channel block, then three
            conv = torch.nn.Conv2d(channels, channels, 3, 1, 1, groups=channels)
            tokens = torch.randn(2, h * w, channels)
            got = kernels.dwconv3x3_gelu(tokens, h, w, conv)
            want = F.gelu(conv(tokens.transpose(1, 2).reshape(2, channels, h, w))).flatten(2).transpose(1, 2)
            out[f"dw_err_c{channels}"] = (got - want).abs().max().item()

        model = archs.build("segformer-b0", num_classes=19).eval()
        for p in model.parameters():  # away from the initial values (unit norms, zero biases)
            p.normal_(0.0, 0.2)
        image = torch.randn(2, 3, 64, 96)
        launched = kernels.launched
        fused = model(image)
        out["launched_by_model"] = kernels.launched - launched
        os.environ[kernels.ENV] = "0"
        plain = model(image)
        os.environ[kernels.ENV] = "1"
        out["model_rel_err"] = ((fused - plain).abs().max() / plain.abs().max()).item()
    from bench.measure.flops import count_flops  # a traced forward takes the PyTorch operators

    launched = kernels.launched
    out["flops_g"] = count_flops(model, (64, 96), device="cpu").gflops
    out["launched_by_tracing"] = kernels.launched - launched
    os.environ[kernels.ENV] = "0"
    out["flops_g_plain"] = count_flops(model, (64, 96), device="cpu").gflops
    out["report"] = kernels.report()
    return out


@needs_triton
def test_fused_kernels_compute_what_the_pytorch_operators_compute_under_the_interpreter():
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    env.pop(kernels.ENV, None)
    done = subprocess.run([sys.executable, __file__], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    got = json.loads(done.stdout.strip().splitlines()[-1])
    assert got["interpreted"] and got["report"] == "used" and not got["active_with_autograd"]
    for name in ("c160_fp32", "c64_fp16", "c64_half"):
        assert got[f"sum_exact_{name}"], name  # the residual sum rounds as `x + branch` does
        assert got[f"no_sum_{name}"], name
        tolerance = 1e-2 if name.endswith("half") else 1e-4  # fp16 outputs: one rounding of values ~4
        assert got[f"ln_err_{name}"] < tolerance, got
        assert got[f"ln_alone_err_{name}"] < tolerance, got
    assert got["dw_err_c40"] < 1e-5 and got["dw_err_c130"] < 1e-5, got
    # segformer-b0 (2 blocks a stage): per stage the patch embedding's norm, the first norm1, two fused
    # additions and one convolution per block, and the reduced keys' norm per block in stages 1-3
    assert got["launched_by_model"] == 4 * (1 + 1 + 2 * 3) + 3 * 2, got
    assert got["model_rel_err"] < 1e-5, got
    assert got["launched_by_tracing"] == 0 and got["flops_g"] == got["flops_g_plain"], got


def test_kernels_stay_off_where_they_cannot_or_must_not_run(monkeypatch):
    x = torch.randn(1, 4, 8)
    if not getattr(kernels, "_INTERPRETER", False):
        assert not kernels.active(x)  # a CPU tensor, compiled kernels
    with torch.no_grad():
        monkeypatch.setenv(kernels.ENV, "0")
        assert not kernels.active(x)
    assert not kernels.active(x.cuda() if torch.cuda.is_available() else x)  # autograd on: no backward
    if kernels.triton is not None and not kernels.launched:
        assert kernels.report() == f"off ({kernels.ENV}=0)"
        monkeypatch.delenv(kernels.ENV)
        assert kernels.report() == "not used"


@needs_triton
def test_a_kernel_that_cannot_run_warns_once_and_the_pytorch_operators_answer(monkeypatch):
    class Broken:
        def __getitem__(self, grid):
            def launch(*args, **kwargs):
                raise RuntimeError("PTX assembly failed\nmore detail")

            return launch

    monkeypatch.setattr(kernels, "_broken", None)
    monkeypatch.setattr(kernels, "_KERNELS", {"add_layer_norm": Broken(), "dwconv": Broken()})
    norm = _random_norm(24)
    x, branch = torch.randn(3, 24), torch.randn(3, 24)
    with torch.no_grad(), pytest.warns(UserWarning, match="add_layer_norm: RuntimeError: PTX assembly failed;"):
        total, y = kernels.add_layer_norm(x, branch, norm, feeds_matmul=True)
    ref_total, ref_y = _reference_ln(x, branch, norm)
    assert torch.equal(total, ref_total) and torch.equal(y, ref_y)
    assert kernels.report() == "failed: add_layer_norm: RuntimeError: PTX assembly failed"
    with torch.no_grad():
        assert not kernels.active(x.cuda() if torch.cuda.is_available() else x)  # not tried again
    conv = torch.nn.Conv2d(8, 8, 3, 1, 1, groups=8)
    with torch.no_grad(), pytest.warns(UserWarning, match="dwconv: RuntimeError"):
        assert kernels.dwconv3x3_gelu(torch.randn(1, 6, 8), 2, 3, conv) is None  # Mix-FFN's operators answer


def _compile_for_sm90(folder, name: str, pointers: dict, scalars: dict, meta: dict) -> str:
    """ptxas's report (registers, spills) for one kernel configuration compiled ahead of time for sm_90."""
    from triton.backends.compiler import GPUTarget
    from triton.backends.nvidia import compiler as nvidia
    from triton.compiler import ASTSource

    ptxas = os.path.join(os.path.dirname(nvidia.__file__), "bin", "ptxas")
    if not os.path.exists(ptxas):
        pytest.skip("this Triton has no bundled ptxas")
    fn = kernels._KERNELS[name]
    constexprs = {k: v for k, v in meta.items() if k != "num_warps"}
    signature = {**pointers, **scalars, **dict.fromkeys(constexprs, "constexpr")}
    indexed = {(fn.arg_names.index(k),): v for k, v in constexprs.items()}
    source = ASTSource(fn=fn, signature=signature, constexprs=indexed)
    options = {"num_warps": meta["num_warps"]}
    ptx = folder / f"{name}.ptx"
    ptx.write_text(kernels.triton.compile(source, target=GPUTarget("cuda", 90, 32), options=options).asm["ptx"])
    command = [ptxas, "-v", "--gpu-name=sm_90a", str(ptx), "-o", os.devnull]
    done = subprocess.run(command, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stderr


@needs_triton
@pytest.mark.skipif(getattr(kernels, "_INTERPRETER", False), reason="compiles for the GPU, not the interpreter")
def test_every_configuration_segformer_launches_compiles_for_sm90_without_spilling(tmp_path):
    """What the interpreter cannot show: Triton's compiler takes each kernel, and ptxas fits it in registers."""
    import re

    reports = {}
    widths = sorted({c for config in MIT_CONFIGS.values() for c in config.embed_dims})  # 32 ... 512
    for cols in widths:
        for x, branch, total, out in (("fp32", "fp16", "fp32", "fp16"), ("fp32", "fp32", "fp32", "fp32")):
            pointers = {"x_ptr": x, "r_ptr": branch, "s_ptr": total, "y_ptr": out, "w_ptr": "fp32", "b_ptr": "fp32"}
            meta = {"HAS_BRANCH": True, "STORE_SUM": True, **kernels.layer_norm_config(cols)}
            reports[f"norm C={cols} {x}+{branch}"] = _compile_for_sm90(
                tmp_path,
                "add_layer_norm",
                {k: f"*{v}" for k, v in pointers.items()},
                {"rows": "i32", "cols": "i32", "eps": "fp32"},
                meta,
            )
    hidden = sorted({4 * c for config in MIT_CONFIGS.values() for c in config.embed_dims})  # 128 ... 2048
    for channels in (hidden[0], hidden[-1]):
        for dtype in ("fp16", "fp32"):
            reports[f"dwconv C={channels} {dtype}"] = _compile_for_sm90(
                tmp_path,
                "dwconv",
                {"x_ptr": f"*{dtype}", "w_ptr": "*fp32", "b_ptr": "*fp32", "y_ptr": f"*{dtype}"},
                {"pixels": "i32", "height": "i32", "width": "i32", "channels": "i32"},
                kernels.dwconv_config(channels),
            )
    for what, report in reports.items():
        registers = int(re.search(r"Used (\d+) registers", report)[1])
        spilled = int(re.search(r"(\d+) bytes spill stores", report)[1])
        assert spilled == 0 and registers <= 96, f"{what}: {registers} registers, {spilled} bytes spilled"


def test_only_a_plain_depthwise_3x3_convolution_is_fused():
    assert kernels.supports_dwconv(torch.nn.Conv2d(8, 8, 3, 1, 1, groups=8))
    assert not kernels.supports_dwconv(torch.nn.Conv2d(8, 8, 3, 2, 1, groups=8))
    assert not kernels.supports_dwconv(torch.nn.Conv2d(8, 8, 3, 1, 1, groups=8, bias=False))
    assert not kernels.supports_dwconv(torch.nn.Conv2d(8, 8, 3, 1, 1, groups=4))


@pytest.mark.gpu
@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_fused_kernels_on_a_gpu_eager_and_replayed_from_a_cuda_graph(monkeypatch, precision):
    torch.manual_seed(0)
    model = archs.build("segformer-b0", num_classes=150).cuda().eval()
    image = torch.randn(1, 3, 480, 656, device="cuda")  # token counts no multiple of the kernels' blocks
    autocast = torch.autocast("cuda", dtype=torch.float16, enabled=precision == "fp16")
    with torch.no_grad(), autocast:
        monkeypatch.setenv(kernels.ENV, "0")
        plain = model(image).float()
        monkeypatch.setenv(kernels.ENV, "1")
        launched = kernels.launched
        fused = model(image).float()
        assert kernels.launched > launched and kernels.report() == "used"
        scale = plain.abs().max()
        assert ((fused - plain).abs().max() / scale).item() < (1e-4 if precision == "fp32" else 2e-2)
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            model(image)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                captured = model(image)
        torch.cuda.current_stream().wait_stream(stream)
        graph.replay()
        torch.cuda.synchronize()
        assert kernels.report() == "used"  # no fallback on the way
        assert ((captured.float() - fused).abs().max() / scale).item() < 1e-3


if __name__ == "__main__":  # the child process of the interpreter test
    print(json.dumps(_checks()))
