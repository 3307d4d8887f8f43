"""GPU benchmark of the radiance-field CUDA kernels and of instant-ngp on lego (issue 5), one run on one GPU.

1. Builds the ``encodings`` and ``marching`` CUDA extensions, both at once in subprocesses (seconds
   each, or "cached"), then loads them in this process.
2. Parity: every CUDA op against its pure-PyTorch reference on the GPU, forward and backward with
   random upstream gradients, edge cases included; tolerances from ``TOLERANCES`` below (one table).
3. Timings (CUDA events, warm-up, median): each op at a realistic size against the eager reference
   and ``torch.compile`` of it ("n/a" with the reason where compiling fails or is skipped).
4. instant-ngp (``paper`` profile, ``cuda`` backend) on lego at 800x800 (every 8th view held out):
   held-out PSNR at 10, 30 and 60 s of training (evaluation time excluded), and the time to render
   one 800x800 view (median after warm-up).
5. One table at the end; JSON to ``--out``.

Targets (H200): hash encoding fwd+bwd (2^20 points, 16 levels x 2, T = 2^19) <= 1.5 ms (naive CUDA
4.4 ms, eager 72 ms, torch.compile 7.1 ms); >= 33 dB within 60 s; one 800x800 view <= 20 ms.

``python bench/gpu.py`` on a GPU machine (about 6 minutes; ``--quick`` for less). Data: ``--data``,
else ``gpu_data/lego`` (``bench/prepare_gpu_data.py``), else ``../shared/data/lego``. Without a GPU it
prints one line and exits 0; ``--device cpu --smoke`` runs every step on the CPU at tiny sizes (the
ops through the C++ CPU kernels or the references themselves, a synthetic 32x32 scene) in seconds.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent

# The one tolerance table. fwd: outputs; bwd: gradients, atol relative to the largest |reference
# gradient|; exact: bit-identical (torch.equal). Loose entries say why.
TOLERANCES: dict[str, dict] = {
    "hash_encode": {"fwd": {"rtol": 1e-5, "atol": 1e-6}, "bwd": {"rtol": 1e-4, "atol": 1e-5},
                    "why": "8 trilinear products summed in another order (FMA); table gradient by float atomics"},
    "hash_encode[half]": {"fwd": {"rtol": 1e-5, "atol": 1e-6}, "bwd": {"rtol": 1e-2, "atol": 1e-2},
                          "why": "half table read exactly; its gradient is returned (maybe accumulated) in half"},
    "hash_encode_input_grad": {"fwd": {"rtol": 1e-4, "atol": 1e-5}, "bwd": {"rtol": 1e-4, "atol": 1e-4},
                               "why": "d(weights)/dx products; double backward scatters by float atomics"},
    "sh_encode": {"fwd": {"rtol": 1e-5, "atol": 1e-6}, "bwd": {"rtol": 1e-5, "atol": 1e-5},
                  "why": "polynomials evaluated in another order"},
    "ray_aabb_intersect": {"fwd": {"rtol": 1e-6, "atol": 1e-6}, "why": "IEEE division and min/max: ~exact"},
    "march_occupancy_grid": {"exact": True, "why": "the kernels follow the reference's float ops bit for bit"},
    "occupancy_ema_update": {"exact": True, "why": "max and one multiply per cell"},
    "render_weights": {"fwd": {"rtol": 1e-4, "atol": 1e-5}, "bwd": {"rtol": 1e-4, "atol": 1e-4},
                       "why": "the reference's prefix sums run in float64, the kernel's in float32"},
    "composite_rays": {"fwd": {"rtol": 1e-4, "atol": 1e-5}, "bwd": {"rtol": 1e-4, "atol": 1e-4},
                       "why": "as render_weights, plus per-ray sums in another order"},
}

DEVICE = "cuda"  # set by main (--device)
SIZES = {  # (GPU, smoke)
    "parity_points": (2**16, 200), "parity_rays": (4096, 48), "parity_grid": (32, 8),
    "hash_points": (2**20, 512), "hash_log2_t": (19, 10), "hash_levels": (16, 4), "igrad_points": (2**18, 256),
    "sh_points": (2**20, 512), "rays": (2**20, 512), "march_rays": (2**18, 128), "grid": (128, 8),
    "packed_rays": (2**14, 32), "packed_per_ray": (64, 8),
}


def size(name: str, smoke: bool) -> int:
    return SIZES[name][1 if smoke else 0]


def log(msg: str) -> None:
    print(f"[gpu.py {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def format_table(headers: list[str], rows: list[list]) -> str:
    """Aligned plain-text table; floats with 3 significant decimals, None as '-'."""
    def cell(v) -> str:
        if v is None:
            return "-"
        if isinstance(v, float):
            return f"{v:.3f}" if v == 0 or 1e-2 <= abs(v) < 1e5 else f"{v:.2e}"
        return str(v)

    text = [[cell(v) for v in row] for row in rows]
    widths = [max([len(h)] + [len(r[i]) for r in text]) for i, h in enumerate(headers)]
    line = lambda cells: "  ".join(c.ljust(w) for c, w in zip(cells, widths)).rstrip()  # noqa: E731
    return "\n".join([line(headers), line(["-" * w for w in widths]), *(line(r) for r in text)])


def _link_root() -> str | None:
    """A temp folder holding an ``omnifield`` link to this repository when omnifield is not importable."""
    import importlib.util

    if importlib.util.find_spec("omnifield") is not None:
        return None
    root = Path(tempfile.mkdtemp(prefix="omnifield_path_"))
    (root / "omnifield").symlink_to(REPO, target_is_directory=True)
    sys.path.insert(0, str(root))
    return str(root)


def sync() -> None:
    if DEVICE == "cuda":
        torch.cuda.synchronize()


def time_ms(fn, warmup: int, iters: int) -> float:
    """Median milliseconds of ``fn()`` (CUDA events on the GPU, wall clock on the CPU) after ``warmup`` calls."""
    for _ in range(warmup):
        fn()
    sync()
    times = []
    for _ in range(iters):
        if DEVICE == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize()
            times.append(start.elapsed_time(end))
        else:
            t0 = time.perf_counter()
            fn()
            times.append(1000 * (time.perf_counter() - t0))
    return statistics.median(times)


# ----------------------------------------------------------------------------------------------
# 1. builds


def build_extensions(names=("encodings", "marching")) -> dict:
    """Build each CUDA extension in its own subprocess, all at once (warms the cache), then load them here."""
    from omnifield.cuda import native

    out: dict = {}
    if DEVICE != "cuda":
        reason = native.cuda_unavailable_reason() or "--device cpu"
        return {n: {"ok": False, "skipped": f"no CUDA build on the CPU ({reason})"} for n in names}
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (_LINK, env.get("PYTHONPATH")) if p)
    code = ("import json, sys, time; from omnifield.cuda import native; t = time.perf_counter(); "
            "m = native.load_cuda_extension(sys.argv[1]); "
            "print(json.dumps({'ok': m is not None, 'seconds': time.perf_counter() - t, "
            "'error': native.last_cuda_error(sys.argv[1])}))")
    procs = {}
    for n in names:
        try:
            key = native.cuda_build_key(n)
            out[n] = {"cached": any((native.cache_root() / f"{n}-cuda-{key}").glob("*.so"))}
        except Exception as exc:  # noqa: BLE001 - the cache layout is informative only
            out[n] = {"cached": None, "cache_error": repr(exc)[:200]}
        procs[n] = subprocess.Popen([sys.executable, "-c", code, n], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                    text=True, env=env)
    for n, p in procs.items():
        stdout, stderr = p.communicate()
        try:
            out[n].update(json.loads(stdout.strip().splitlines()[-1]))
        except (IndexError, json.JSONDecodeError):
            out[n].update({"ok": False, "error": (stderr or stdout)[-1500:]})
        log(f"build {n}: {'ok' if out[n].get('ok') else 'FAILED'} in {out[n].get('seconds', float('nan')):.1f} s"
            + (" (cached)" if out[n].get("cached") else ""))
    for n in names:
        t0 = time.perf_counter()
        ext = native.load_cuda_extension(n)
        out[n]["load_seconds"] = time.perf_counter() - t0
        out[n]["ok"] = ext is not None
        if ext is None:
            out[n]["error"] = out[n].get("error") or native.last_cuda_error(n)
    return out


# ----------------------------------------------------------------------------------------------
# the implementations under test


def _get(module, name: str):
    """``module.name``, or a function raising why it is missing (the row fails, the run goes on)."""
    fn = getattr(module, name, None)
    if fn is not None:
        return fn

    def missing(*args, **kwargs):
        raise NotImplementedError(f"{module.__name__}.{name} does not exist (yet)")
    return missing


class Impls:
    """``impl``: the CUDA wrappers on the GPU (called directly: a failure must show, not fall back), the
    public ops with the ``cpp`` backend on the CPU (C++ kernels where an op has one, else the reference);
    ``ref``: the references."""

    def __init__(self, smoke_backend: str | None):
        from omnifield.cuda import ops
        from omnifield.cuda.reference import compositing, hash_encoding, occupancy, ray_aabb, sh_encoding

        from omnifield.cuda import cuda_encodings as enc
        from omnifield.cuda import cuda_marching as march

        modules = {"hash_encode": (hash_encoding, enc), "hash_encode_input_grad": (hash_encoding, enc),
                   "sh_encode": (sh_encoding, enc), "ray_aabb_intersect": (ray_aabb, march),
                   "march_occupancy_grid": (occupancy, march), "occupancy_ema_update": (occupancy, march),
                   "render_weights": (compositing, march), "composite_rays": (compositing, march)}
        self.ref = {n: _get(ref, n) for n, (ref, _) in modules.items()}
        if smoke_backend is None:
            self.impl = {n: _get(cuda, n) for n, (_, cuda) in modules.items()}
        else:
            def bind(name):
                fn = getattr(ops, name)
                return lambda *a: fn(*a, backend=smoke_backend)

            self.impl = {n: bind(n) for n in self.ref}


# ----------------------------------------------------------------------------------------------
# 2. parity


def _err(got, ref) -> float:
    if got is not None and ref is not None and got.shape != ref.shape:
        return float("inf")
    if ref is None or ref.numel() == 0 or not ref.is_floating_point():
        return 0.0 if got is None or ref is None or torch.equal(got, ref) else float("inf")
    return float((got.float() - ref.float()).abs().nan_to_num(0.0, posinf=0.0, neginf=0.0).max())


def _close(got, ref, tol: dict | None, exact: bool, relative: bool) -> bool:
    if got is None or ref is None:
        return got is None and ref is None
    if got.shape != ref.shape:
        return False
    if exact or not ref.is_floating_point():
        return bool(torch.equal(got.to(ref.dtype), ref))
    if ref.numel() == 0:
        return True
    atol = tol["atol"] * (max(1.0, float(ref.abs().max())) if relative else 1.0)
    return bool(torch.allclose(got.float(), ref.float(), rtol=tol["rtol"], atol=atol, equal_nan=True))


def _run(fn, leaves: list, rest: list, seed: int):
    """``fn(*leaves, *rest)`` -> (outputs, gradients of sum(out * random) w.r.t. the leaves)."""
    leaves = [t.detach().clone().requires_grad_() for t in leaves]
    outs = fn(*leaves, *rest)
    outs = list(outs) if isinstance(outs, (tuple, list)) else [outs]
    if not leaves:
        return [o.detach() if isinstance(o, torch.Tensor) else o for o in outs], []
    gen = torch.Generator(device=DEVICE).manual_seed(seed)
    diff = [o for o in outs if isinstance(o, torch.Tensor) and o.requires_grad]
    loss = sum((o.float() * torch.randn(o.shape, generator=gen, device=DEVICE)).sum() for o in diff)
    grads = torch.autograd.grad(loss, leaves, allow_unused=True) if diff else [None] * len(leaves)
    return [o.detach() for o in outs], [torch.zeros_like(l) if g is None else g for l, g in zip(leaves, grads)]


def check(key: str, case: str, got_fn, ref_fn, leaves: list, rest: list) -> dict:
    """One parity row: forward and backward of ``got_fn`` against ``ref_fn`` on the same inputs."""
    tol = TOLERANCES[key]
    row = {"op": key, "case": case}
    try:
        got_o, got_g = _run(got_fn, leaves, rest, 7)
        ref_o, ref_g = _run(ref_fn, leaves, rest, 7)
        exact = bool(tol.get("exact"))
        row["fwd_max_err"] = max([_err(a, b) for a, b in zip(got_o, ref_o)] or [0.0])
        row["bwd_max_err"] = max([_err(a, b) for a, b in zip(got_g, ref_g)]) if ref_g else None
        ok = len(got_o) == len(ref_o) and all(_close(a, b, tol.get("fwd"), exact, False) for a, b in zip(got_o, ref_o))
        ok = ok and all(_close(a, b, tol.get("bwd"), exact, True) for a, b in zip(got_g, ref_g))
        row["pass"] = ok
    except Exception as exc:  # noqa: BLE001 - a broken op is a failed row, the run goes on
        row.update({"fwd_max_err": None, "bwd_max_err": None, "pass": False, "error": f"{type(exc).__name__}: {exc}"[:300]})
    return row


def hash_inputs(n: int, levels: int, log2_t: int, gen: torch.Generator, edges: bool = True):
    """Points (random, plus cell corners, boundaries and points outside the cube), a table and its layout."""
    from omnifield.fields.encodings import HashGridConfig, hash_grid_layout

    res, off = hash_grid_layout(HashGridConfig(n_levels=levels, n_features=2, log2_table_size=log2_t,
                                               max_resolution=2048 if levels >= 8 else 128))
    x = torch.rand(n, 3, generator=gen)
    if edges and n >= 64:
        k = torch.randint(0, 17, (16, 3), generator=gen).float() / 16  # vertices of the 16^3 level (and finer)
        x[:16] = k
        x[16:19] = torch.tensor([[0.0, 0.0, 0.0], [1.0, 1.0, 1.0], [1.0, 0.0, 1.0]])
        x[19:22] = torch.tensor([[-0.2, 0.5, 1.3], [0.5, 1.0000001, 0.5], [-1e-7, 0.25, 0.75]])
    table = (torch.rand(int(off[-1]), 2, generator=gen) * 2 - 1) * 0.1
    return x.to(DEVICE), table.to(DEVICE), res.to(DEVICE), off.to(DEVICE)


def packed_inputs(n_rays: int, per_ray: int, gen: torch.Generator, sigma_scale: float = 4.0):
    """Packed samples: random counts in [0, 2 per_ray) (ray 0 empty), increasing intervals, densities."""
    from omnifield.cuda.reference.compositing import packed_info_from_ray_indices

    counts = torch.randint(0, 2 * per_ray, (n_rays,), generator=gen)
    counts[0] = 0
    ri = torch.repeat_interleave(torch.arange(n_rays), counts)
    dt = torch.rand(len(ri), generator=gen) * 0.02 + 1e-3
    first = torch.cumsum(counts, 0) - counts
    ends = torch.cumsum(dt, 0)
    t_ends = 2.0 + ends - (ends - dt)[first[ri]]  # each ray starts at t = 2
    t_starts = t_ends - dt
    sigmas = torch.rand(len(ri), generator=gen) ** 4 * sigma_scale / 0.01
    info = packed_info_from_ray_indices(ri, n_rays)
    return [t.to(DEVICE).contiguous() for t in (sigmas, t_starts, t_ends, ri, info)]


def march_inputs(n_rays: int, res: int, levels: int, gen: torch.Generator, occupancy: float = 0.3):
    """Rays from ~3.5 units towards the unit box, their box segment, a random cascaded grid."""
    from omnifield.cuda.reference.ray_aabb import ray_aabb_intersect

    aabb = torch.tensor([[-1.0, -1.0, -1.0], [1.0, 1.0, 1.0]])
    d = torch.nn.functional.normalize(torch.randn(n_rays, 3, generator=gen), dim=-1)
    o = -3.5 * d + torch.randn(n_rays, 3, generator=gen) * 0.6
    o[: max(1, n_rays // 16)] *= 4  # some rays miss the box
    outer = aabb * 2.0 ** (levels - 1)
    t0, t1, _ = ray_aabb_intersect(o, d, outer)
    t_min, t_max = t0.clamp_min(0.1), t1.clamp_max(1e10)
    binaries = torch.rand(levels, res, res, res, generator=gen) < occupancy
    return [t.to(DEVICE).contiguous() for t in (o, d, t_min, t_max, binaries, aabb)]


def parity(impls: Impls, smoke: bool) -> list[dict]:
    """Every op, forward and backward, on random inputs and edge cases."""
    I, R = impls.impl, impls.ref
    gen = torch.Generator().manual_seed(0)
    rows = []
    n = size("parity_points", smoke)
    levels, log2_t = (16, 14) if not smoke else (4, 10)
    x, table, res, off = hash_inputs(n, levels, log2_t, gen)
    rows.append(check("hash_encode", f"{n} pts, L={levels}, T=2^{log2_t}, edges",
                      lambda x, t: I["hash_encode"](x, t, res, off), lambda x, t: R["hash_encode"](x, t, res, off),
                      [x, table], []))
    rows.append(check("hash_encode[half]", "float16 table", lambda x, t: I["hash_encode"](x, t, res, off),
                      lambda x, t: R["hash_encode"](x, t.float(), res, off), [x, table.half()], []))
    g_out = torch.randn(n, levels * 2, generator=gen).to(DEVICE)
    rows.append(check("hash_encode_input_grad", "fwd + double backward",
                      lambda g, t: I["hash_encode_input_grad"](g, x, t, res, off),
                      lambda g, t: R["hash_encode_input_grad"](g, x, t, res, off), [g_out, table], []))

    def eikonal(g, t):  # grad w.r.t. x of the encoding with create_graph (NeuS2's eikonal loss)
        xl = x.detach().clone().requires_grad_()
        return torch.autograd.grad(I["hash_encode"](xl, t, res, off), xl, g, create_graph=True)[0]

    if DEVICE == "cuda":  # the CPU kernels are first-order only
        rows.append(check("hash_encode_input_grad", "create_graph through hash_encode", eikonal,
                          lambda g, t: R["hash_encode_input_grad"](g, x, t, res, off), [g_out, table], []))
    empty = x[:0]
    rows.append(check("hash_encode", "N = 0", lambda x, t: I["hash_encode"](x, t, res, off),
                      lambda x, t: R["hash_encode"](x, t, res, off), [empty, table], []))
    dirs = torch.nn.functional.normalize(torch.randn(n, 3, generator=gen), dim=-1)
    dirs[:6] = torch.tensor([[1.0, 0, 0], [-1, 0, 0], [0, 1, 0], [0, -1, 0], [0, 0, 1], [0, 0, -1]])
    dirs = dirs.to(DEVICE)
    for degree in (1, 2, 3, 4):
        rows.append(check("sh_encode", f"degree {degree}", lambda d, k=degree: I["sh_encode"](d, k),
                          lambda d, k=degree: R["sh_encode"](d, k), [dirs], []))
    nr = size("parity_rays", smoke)
    o, d, t_min, t_max, binaries, aabb = march_inputs(nr, size("parity_grid", smoke), 1, gen)
    d[:3] = torch.tensor([[1.0, 0, 0], [0, 0, -1.0], [0, 1.0, 0]], device=DEVICE)  # zero components
    o[:3] = torch.tensor([[-3.0, 0.2, 0.1], [0.0, 0.0, 0.0], [2.0, -3.0, 2.0]], device=DEVICE)  # in front, inside, missing
    for box_name, box in (("unit box", aabb), ("skewed box", torch.tensor([[-0.5, -1.0, 0.0], [1.5, 0.2, 0.3]], device=DEVICE))):
        rows.append(check("ray_aabb_intersect", box_name, lambda: I["ray_aabb_intersect"](o, d, box),
                          lambda: R["ray_aabb_intersect"](o, d, box), [], []))
    offset = torch.rand(nr, generator=gen).to(DEVICE)
    step = 2 * math.sqrt(3) / (256 if smoke else 1024)
    march_cases = [("constant step, jittered", binaries, t_min, t_max, 0.0, 1e10, offset),
                   ("empty grid", torch.zeros_like(binaries), t_min, t_max, 0.0, 1e10, None),
                   ("t_max <= t_min", binaries, t_max, t_min, 0.0, 1e10, None)]
    o2, d2, tmin2, tmax2, bins2, aabb2 = march_inputs(nr, size("parity_grid", smoke), 3, gen)
    march_cases += [("cone 1/256, 3 cascades", bins2, tmin2, tmax2, 1 / 256, 1e10, offset),
                    ("cone 1/64, max_step 0.05", bins2, tmin2, tmax2, 1 / 64, 0.05, None)]
    for case, bins, lo, hi, cone, max_step, off_ in march_cases:
        oo, dd, box = (o, d, aabb) if bins.shape[0] == 1 else (o2, d2, aabb2)
        rows.append(check("march_occupancy_grid", case,
                          lambda: I["march_occupancy_grid"](oo, dd, lo, hi, bins, box, step, off_, cone, max_step),
                          lambda: R["march_occupancy_grid"](oo, dd, lo, hi, bins, box, step, off_, cone, max_step), [], []))
    cells = bins2.numel()
    occs = torch.rand(cells, generator=gen).to(DEVICE)
    ids = torch.cat([torch.randint(0, cells, (cells // 2,), generator=gen), torch.tensor([5, 5, 5, cells - 1])]).to(DEVICE)
    vals = torch.rand(len(ids), generator=gen).to(DEVICE)
    rows.append(check("occupancy_ema_update", "duplicate cells", lambda: I["occupancy_ema_update"](occs.clone(), ids, vals, 0.95),
                      lambda: R["occupancy_ema_update"](occs.clone(), ids, vals, 0.95), [], []))
    sig, ts, te, ri, info = packed_inputs(nr, size("packed_per_ray", smoke), gen)
    rows.append(check("render_weights", f"{len(ri)} samples, empty rays", lambda s: I["render_weights"](s, ts, te, ri, info),
                      lambda s: R["render_weights"](s, ts, te, ri, info), [sig], []))
    vals3 = torch.rand(len(ri), 3, generator=gen).to(DEVICE)
    for eps in (0.0, 1e-4, 1e-2):
        rows.append(check("composite_rays", f"C=3, early_stop_eps {eps:g}",
                          lambda s, v, e=eps: I["composite_rays"](s, v, ts, te, ri, info, e),
                          lambda s, v, e=eps: R["composite_rays"](s, v, ts, te, ri, info, e), [sig, vals3], []))
    vals5 = torch.rand(len(ri), 5, generator=gen).to(DEVICE)
    rows.append(check("composite_rays", "C=5", lambda s, v: I["composite_rays"](s, v, ts, te, ri, info, 0.0),
                      lambda s, v: R["composite_rays"](s, v, ts, te, ri, info, 0.0), [sig, vals5], []))
    z = torch.zeros(0, device=DEVICE)
    zi = torch.zeros(0, dtype=torch.long, device=DEVICE)
    info0 = torch.zeros(4, 2, dtype=torch.long, device=DEVICE)
    rows.append(check("render_weights", "S = 0", lambda s: I["render_weights"](s, z, z, zi, info0),
                      lambda s: R["render_weights"](s, z, z, zi, info0), [z], []))
    rows.append(check("composite_rays", "S = 0", lambda s, v: I["composite_rays"](s, v, z, z, zi, info0, 1e-4),
                      lambda s, v: R["composite_rays"](s, v, z, z, zi, info0, 1e-4), [z, z.reshape(0, 3)], []))
    return rows


# ----------------------------------------------------------------------------------------------
# 3. timings


def timing_cases(impls: Impls, smoke: bool) -> list[tuple]:
    """``(name, op, fn(impl_fn) -> closure, target_ms)`` at realistic sizes (tiny with --smoke)."""
    gen = torch.Generator().manual_seed(1)
    n, levels, log2_t = size("hash_points", smoke), size("hash_levels", smoke), size("hash_log2_t", smoke)
    x, table, res, off = hash_inputs(n, levels, log2_t, gen, edges=False)
    table = table * 1e-3
    up = torch.randn(n, levels * 2, generator=gen).to(DEVICE)

    def fwd_bwd(fn, t):
        tl = t.clone().requires_grad_()
        xl = x.clone().requires_grad_()

        def run():
            tl.grad = xl.grad = None
            fn(xl, tl, res, off).backward(up)
        return run

    def fwd(fn):
        def run():
            with torch.no_grad():
                fn(x, table, res, off)
        return run

    ni = size("igrad_points", smoke)
    g_out, xi = up[:ni].contiguous(), x[:ni].contiguous()
    up3 = torch.randn(ni, 3, generator=gen).to(DEVICE)

    def igrad(fn):
        gl, tl = g_out.clone().requires_grad_(), table.clone().requires_grad_()

        def run():
            gl.grad = tl.grad = None
            fn(gl, xi, tl, res, off).backward(up3)
        return run

    ns = size("sh_points", smoke)
    dirs = torch.nn.functional.normalize(torch.randn(ns, 3, generator=gen), dim=-1).to(DEVICE)
    up16 = torch.randn(ns, 16, generator=gen).to(DEVICE)

    def sh(fn):
        dl = dirs.clone().requires_grad_()

        def run():
            dl.grad = None
            fn(dl, 4).backward(up16)
        return run

    nr = size("rays", smoke)
    o = torch.randn(nr, 3, generator=gen).to(DEVICE) * 3
    d = torch.nn.functional.normalize(torch.randn(nr, 3, generator=gen), dim=-1).to(DEVICE)
    aabb = torch.tensor([[-1.5, -1.5, -1.5], [1.5, 1.5, 1.5]], device=DEVICE)
    nm, g = size("march_rays", smoke), size("grid", smoke)
    mo, md, tmin, tmax, bins, box = march_inputs(nm, g, 1, gen, occupancy=0.1)
    moff = torch.rand(nm, generator=gen).to(DEVICE)
    step = 2 * math.sqrt(3) / 1024
    occs = torch.rand(g**3, generator=gen).to(DEVICE)
    ids = torch.arange(g**3, device=DEVICE)
    vals = torch.rand(g**3, generator=gen).to(DEVICE)
    sig, ts, te, ri, info = packed_inputs(size("packed_rays", smoke), size("packed_per_ray", smoke), gen)
    rgb = torch.rand(len(ri), 3, generator=gen).to(DEVICE)
    upw = torch.randn(len(ri), generator=gen).to(DEVICE)
    upc = torch.randn(info.shape[0], 3, generator=gen).to(DEVICE)

    def weights(fn):
        sl = sig.clone().requires_grad_()

        def run():
            sl.grad = None
            fn(sl, ts, te, ri, info)[0].backward(upw)
        return run

    def comp(fn):
        sl, vl = sig.clone().requires_grad_(), rgb.clone().requires_grad_()

        def run():
            sl.grad = vl.grad = None
            out, depth, acc = fn(sl, vl, ts, te, ri, info, 1e-4)
            ((out * upc).sum() + depth.sum() + acc.sum()).backward()
        return run

    hash_label = f"{n} pts, {levels}x2, T=2^{log2_t}"
    return [
        (f"hash_encode fwd+bwd ({hash_label})", "hash_encode", lambda f: fwd_bwd(f, table), 1.5),
        (f"hash_encode fwd+bwd, half table ({hash_label})", "hash_encode",
         lambda f: fwd_bwd(f, table.half()) if f is impls.impl["hash_encode"] else fwd_bwd(f, table), None),
        (f"hash_encode fwd ({hash_label})", "hash_encode", fwd, None),
        (f"hash_encode_input_grad fwd+double bwd ({ni} pts)", "hash_encode_input_grad", igrad, None),
        (f"sh_encode(4) fwd+bwd ({ns} dirs)", "sh_encode", sh, None),
        (f"ray_aabb_intersect ({nr} rays)", "ray_aabb_intersect", lambda f: lambda: f(o, d, aabb), None),
        (f"march_occupancy_grid ({nm} rays, {g}^3, 10% occupied)", "march_occupancy_grid",
         lambda f: lambda: f(mo, md, tmin, tmax, bins, box, step, moff), None),
        (f"occupancy_ema_update ({g}^3 cells)", "occupancy_ema_update", lambda f: lambda: f(occs, ids, vals, 0.95), None),
        (f"render_weights fwd+bwd ({len(ri)} samples)", "render_weights", weights, None),
        (f"composite_rays fwd+bwd ({len(ri)} samples, C=3, eps 1e-4)", "composite_rays", comp, None),
    ]


def timings(impls: Impls, args) -> list[dict]:
    """CUDA kernel vs eager reference vs torch.compile(reference), ms (median)."""
    rows = []
    compiled: dict = {}
    compile_left = args.compile_budget
    import logging

    logging.getLogger("torch._dynamo").setLevel(logging.ERROR)  # graph-break notices: the table says n/a or not
    for name, op, make, target in timing_cases(impls, args.smoke):
        row = {"name": name, "op": op, "target_ms": target}
        for col, fn in (("omnifield_ms", impls.impl[op]), ("eager_ms", impls.ref[op])):
            try:
                row[col] = time_ms(make(fn), args.warmup, args.iters)
            except Exception as exc:  # noqa: BLE001
                row[col], row[col + "_error"] = None, f"{type(exc).__name__}: {exc}"[:200]
        row["compile_ms"] = None
        if args.smoke and op != "hash_encode":
            row["compile_note"] = "n/a: skipped with --smoke (hash_encode only, dynamo's eager backend)"
        elif args.compile_budget <= 0:
            row["compile_note"] = "n/a: torch.compile skipped (--quick or --compile-budget 0)"
        elif compile_left <= 0:
            row["compile_note"] = f"n/a: compile budget ({args.compile_budget:.0f} s) spent"
        else:
            try:
                if op not in compiled:
                    compiled[op] = torch.compile(impls.ref[op], backend="eager" if args.smoke else "inductor")
                t0 = time.perf_counter()
                run = make(compiled[op])
                run()
                sync()
                row["compile_seconds"] = time.perf_counter() - t0
                compile_left -= row["compile_seconds"]
                row["compile_ms"] = time_ms(run, args.warmup, args.iters)
            except Exception as exc:  # noqa: BLE001 - compile fails on data-dependent shapes etc.
                row["compile_note"] = f"n/a: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"[:160]
                compile_left -= 1.0
        if row.get("omnifield_ms") and row.get("eager_ms"):
            row["speedup_vs_eager"] = row["eager_ms"] / row["omnifield_ms"]
        ms = lambda v: "-" if v is None else f"{v:.3f} ms"  # noqa: E731
        log(f"timing {name}: omnifield {ms(row.get('omnifield_ms'))}, eager {ms(row.get('eager_ms'))}, "
            f"compile {ms(row['compile_ms']) if row.get('compile_ms') else row.get('compile_note')}")
        rows.append(row)
    return rows


# ----------------------------------------------------------------------------------------------
# 4. instant-ngp on lego


def write_tiny_scene(root: Path, views: int = 16, size_px: int = 32) -> Path:
    """A Blender-format scene of two analytic spheres (RGBA PNGs), for the --smoke run."""
    import imageio.v3 as iio
    import numpy as np

    root.mkdir(parents=True, exist_ok=True)
    (root / "train").mkdir(exist_ok=True)
    fov = 0.69
    focal = 0.5 * size_px / math.tan(0.5 * fov)
    spheres = [(np.array([0.0, 0.0, 0.0]), 0.7, np.array([0.9, 0.4, 0.1])),
               (np.array([0.5, 0.5, 0.6]), 0.35, np.array([0.1, 0.5, 0.9]))]
    frames = []
    for k in range(views):
        az, el = 2 * math.pi * k / views, 0.3 + 0.4 * (k % 3) / 2
        eye = 4.0 * np.array([math.cos(az) * math.cos(el), math.sin(az) * math.cos(el), math.sin(el)])
        fwd = -eye / np.linalg.norm(eye)
        right = np.cross(fwd, [0.0, 0.0, 1.0])
        right /= np.linalg.norm(right)
        up = np.cross(right, fwd)
        c2w = np.eye(4)
        c2w[:3, 0], c2w[:3, 1], c2w[:3, 2], c2w[:3, 3] = right, up, -fwd, eye  # OpenGL axes
        v, u = np.mgrid[0:size_px, 0:size_px] + 0.5
        dirs = np.stack([(u - size_px / 2) / focal, -(v - size_px / 2) / focal, -np.ones_like(u)], -1) @ c2w[:3, :3].T
        dirs /= np.linalg.norm(dirs, axis=-1, keepdims=True)
        best, img = np.full(u.shape, np.inf), np.zeros((*u.shape, 4))
        for centre, radius, colour in spheres:
            oc = eye - centre
            b = (dirs * oc).sum(-1)
            disc = b * b - (oc @ oc - radius**2)
            t = -b - np.sqrt(np.maximum(disc, 0))
            hit = (disc > 0) & (t > 0) & (t < best)
            normal = (eye + dirs * t[..., None] - centre) / radius
            shade = 0.4 + 0.6 * np.clip(normal @ np.array([0.3, 0.5, 0.8]), 0, 1)
            img[hit, :3] = (colour * shade[..., None] * (0.75 + 0.25 * np.sin(8 * normal[..., :1])))[hit]
            img[hit, 3], best[hit] = 1.0, t[hit]
        iio.imwrite(root / "train" / f"r_{k}.png", (np.clip(img, 0, 1) * 255 + 0.5).astype(np.uint8))
        frames.append({"file_path": f"./train/r_{k}", "transform_matrix": c2w.tolist()})
    (root / "transforms_train.json").write_text(json.dumps({"camera_angle_x": fov, "frames": frames}))
    return root


def find_lego(arg: Path | None) -> Path | None:
    candidates = [arg] if arg else [REPO / "gpu_data" / "lego"]
    if not arg:
        env = os.environ.get("OMNIFIELD_SHARED_DATA")
        candidates += [Path(env) / "lego"] if env else []
        candidates.append(REPO.parent / "shared" / "data" / "lego")
    return next((c for c in candidates if (c / "transforms_train.json").is_file()), None)


def _render_view(scene, cams, index: int, background, chunk: list[int]):
    """One view ``[H, W, 3]``; ``chunk[0]`` rays per pass, halved (and kept halved) when the GPU runs out of memory."""
    from omnifield.scenes.base import RenderOptions

    while True:
        try:
            with torch.no_grad():
                return scene.render(cams[[index]], None, RenderOptions(background=background, chunk=chunk[0]))[0].rgb
        except torch.cuda.OutOfMemoryError:
            if chunk[0] <= 4096:
                raise
            chunk[0] //= 2
            torch.cuda.empty_cache()
            log(f"render: out of GPU memory, {chunk[0]} rays per pass from now on")


def evaluate_views(scene, data, cams, views: list[int], chunk: list[int]) -> float:
    """Mean PSNR of the rendered held-out ``views`` (clamped to [0, 1], against the uint8 images)."""
    from omnifield.scenes.metrics import psnr

    scene.eval()
    bg = tuple(float(b) for b in data.background)
    values = [psnr(_render_view(scene, cams, i, bg, chunk).float().clamp(0, 1).cpu(), data.images.rgb(i)) for i in views]
    return float(sum(values) / len(values))


def train_lego(args) -> dict:
    """instant-ngp on lego (or the tiny scene): PSNR after each --seconds budget, then the render time."""
    from omnifield.datasets.load import load_scene
    from omnifield.scenes.configs import apply_overrides
    from omnifield.scenes.instant_ngp import InstantNGPConfig, build
    from omnifield.scenes.trainer import Trainer, TrainerConfig

    data_dir = find_lego(args.data) if (args.data or not args.smoke) else None
    if data_dir is None and not args.smoke:
        return {"skipped": "lego not found (--data, gpu_data/lego or ../shared/data/lego)"}
    if data_dir is None:
        data_dir = write_tiny_scene(Path(tempfile.mkdtemp(prefix="omnifield_tiny_")) / "tiny")
    downscale = args.downscale or 1
    t0 = time.perf_counter()
    data = load_scene(data_dir, downscale=downscale)
    overrides = list(args.set) + (["profile=cpu", "n_levels=4", "log2_hashmap_size=12", "max_resolution=64",
                                   "grid_resolution=16", "target_samples_per_batch=4096", "hidden_dim=16"]
                                  if args.smoke else ["profile=paper"])
    config = apply_overrides(InstantNGPConfig(), overrides)
    torch.manual_seed(0)
    scene = build(config, data).to(DEVICE)
    trainer = Trainer(scene, data, TrainerConfig(max_steps=args.max_steps, eval_every=0, checkpoint_every=0,
                                                 checkpoint_minutes=None, progress=False), None)
    test = data.split("test")
    views = test if not args.eval_views else [test[round(i * (len(test) - 1) / max(1, args.eval_views - 1))]
                                              for i in range(min(args.eval_views, len(test)))]
    cams = data.cameras.to(DEVICE)
    out = {"data": str(data_dir), "scene": data_dir.name, "downscale": downscale, "width": int(data.cameras.width[0]),
           "height": int(data.cameras.height[0]), "train_views": len(data.split("train")), "eval_views": views,
           "load_seconds": time.perf_counter() - t0, "config": {k: v for k, v in vars(scene.config).items()},
           "checkpoints": []}
    log(f"train: {out['train_views']} views {out['width']}x{out['height']}, held out {len(test)} (scoring {len(views)})")
    budgets = sorted(float(s) for s in args.seconds.split(","))
    chunk = [args.render_chunk]
    elapsed, step_s, samples = 0.0, None, []
    for budget in budgets:
        while elapsed < budget:
            t = time.perf_counter()
            logs = trainer.step()  # float(loss) inside: the GPU is synchronised every step
            dt = time.perf_counter() - t
            elapsed += dt
            samples.append(logs.get("num_samples", 0.0))
            step_s = dt if step_s is None else 0.95 * step_s + 0.05 * dt
            s = trainer.global_step
            if s >= 50 and s % 50 == 0 and trainer.scheduler is not None:  # the LR schedule ends with the last budget
                horizon = min(args.max_steps, s + int(max(0.0, budgets[-1] - elapsed) / max(step_s, 1e-6)))
                for fn in getattr(trainer.scheduler, "lr_lambdas", []):
                    if hasattr(fn, "max_steps"):
                        fn.max_steps = max(horizon, 1)
            if trainer.global_step >= args.max_steps:
                break
        t = time.perf_counter()
        value = evaluate_views(scene, data, cams, views, chunk)
        row = {"seconds": budget, "train_seconds": elapsed, "steps": trainer.global_step, "psnr": value,
               "train_psnr": logs.get("psnr"), "eval_seconds": time.perf_counter() - t,
               "samples_per_step": statistics.mean(samples[-50:]) if samples else None,
               "rays_per_step": logs.get("rays")}
        out["checkpoints"].append(row)
        log(f"train: {budget:g} s -> step {row['steps']}, held-out PSNR {value:.2f} dB (eval {row['eval_seconds']:.1f} s)")
    bg = tuple(float(b) for b in data.background)
    run = lambda: _render_view(scene, cams, views[0], bg, chunk)  # noqa: E731
    run()
    out["render_ms"] = time_ms(run, 1, args.render_iters)
    out["render_chunk"] = chunk[0]
    log(f"render: one {out['width']}x{out['height']} view in {out['render_ms']:.1f} ms ({chunk[0]} rays per pass)")
    return out


# ----------------------------------------------------------------------------------------------
# 5. table and main


def summary_rows(result: dict) -> list[list]:
    """The final table: builds, parity, timings, training; status against the issue's targets."""
    rows = []
    for key in ("parity", "timings"):
        if isinstance(result.get(key), dict):  # the stage raised
            rows.append([key, None, None, None, "FAIL", result[key].get("error", "")[:70]])
            result = {k: v for k, v in result.items() if k != key}
    for name, b in result.get("builds", {}).items():
        status = "skipped" if "skipped" in b else ("ok" + (", cached" if b.get("cached") else "") if b.get("ok") else "FAIL")
        note = b.get("skipped") or (b.get("error") or "")[:70] or f"load {b.get('load_seconds', 0):.2f} s"
        rows.append([f"build {name} (s)", b.get("seconds"), None, None, status, note])
    for p in result.get("parity", []):
        note = p.get("error", "")[:70] or ("" if p.get("bwd_max_err") is None else f"bwd max err {p['bwd_max_err']:.2e}")
        rows.append([f"parity {p['op']}: {p['case']} (fwd err)", p.get("fwd_max_err"), None, None,
                     "pass" if p["pass"] else "FAIL", note])
    for t in result.get("timings", []):
        note = t.get("compile_note") or (f"compile {t['compile_seconds']:.1f} s" if "compile_seconds" in t else "")
        if t.get("target_ms"):
            note = f"target <= {t['target_ms']} ms; " + note
        if t.get("omnifield_ms_error"):
            note = t["omnifield_ms_error"][:70]
        rows.append([f"{t['name']} (ms)", t.get("omnifield_ms"), t.get("eager_ms"), t.get("compile_ms"),
                     "" if t.get("omnifield_ms") is None or not t.get("target_ms") else
                     ("pass" if t["omnifield_ms"] <= t["target_ms"] else "slower"), note])
    tr = result.get("train", {})
    if "skipped" in tr or "error" in tr:
        rows.append(["instant-ngp lego", None, None, None, "skipped" if "skipped" in tr else "FAIL",
                     (tr.get("skipped") or tr.get("error", ""))[:70]])
    for c in tr.get("checkpoints", []):
        last = c is tr["checkpoints"][-1]
        full = tr.get("scene") == "lego" and tr.get("width", 0) >= 800
        status = ("pass" if c["psnr"] >= 33 else "below") if full and last and c["seconds"] >= 60 else ""
        rows.append([f"{tr['scene']} PSNR after {c['seconds']:g} s training (dB)", c["psnr"], None, None, status,
                     f"{c['steps']} steps, {len(tr['eval_views'])} held-out views" + ("; target >= 33" if last and full else "")])
    if "render_ms" in tr:
        rows.append([f"render one {tr['width']}x{tr['height']} view (ms)", tr["render_ms"], None, None,
                     "" if tr["width"] < 800 else "pass" if tr["render_ms"] <= 20 else "slower",
                     f"target <= 20 ms at 800x800; {tr.get('render_chunk')} rays per pass"])
    return rows


def _stage(result: dict, key: str, fn, out: Path):
    t0 = time.perf_counter()
    try:
        result[key] = fn()
    except Exception as exc:  # noqa: BLE001 - one failing stage must not hide the others
        import traceback

        traceback.print_exc()
        result[key] = {"error": f"{type(exc).__name__}: {exc}"[:500]}
    result.setdefault("stage_seconds", {})[key] = time.perf_counter() - t0
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2, default=str))


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "gpu.json")
    ap.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    ap.add_argument("--smoke", action="store_true", help="tiny sizes (for --device cpu: tests the script)")
    ap.add_argument("--quick", action="store_true", help="fewer timing iterations, no torch.compile, 10,30 s of training")
    ap.add_argument("--skip-train", action="store_true")
    ap.add_argument("--skip-parity", action="store_true")
    ap.add_argument("--skip-timings", action="store_true")
    ap.add_argument("--data", type=Path, default=None, help="lego folder (default gpu_data/lego, ../shared/data/lego)")
    ap.add_argument("--seconds", default=None, help="training budgets (default 10,30,60; --smoke 1,2,3)")
    ap.add_argument("--downscale", type=int, default=None, help="image downscale (default 1: 800x800)")
    ap.add_argument("--set", action="append", default=[], help="instant-ngp config override key=value (repeatable)")
    ap.add_argument("--eval-views", type=int, default=0, help="held-out views scored (0: all, 13 on lego)")
    ap.add_argument("--render-chunk", type=int, default=2**18, help="rays per render pass (halved on OOM)")
    ap.add_argument("--tf32", action="store_true", help="TF32 matmuls for the MLPs (torch's default is off)")
    ap.add_argument("--render-iters", type=int, default=10)
    ap.add_argument("--max-steps", type=int, default=20000, help="step cap (the LR schedule follows the time budget)")
    ap.add_argument("--iters", type=int, default=None, help="timed iterations per op (default 20, --quick 5)")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--compile-budget", type=float, default=None,
                    help="seconds of torch.compile compilation before the rest is reported n/a (default 90)")
    ap.add_argument("--backend", default=None, help="ops backend for training (default cuda; cpp with --device cpu)")
    args = ap.parse_args(argv)
    args.seconds = args.seconds or ("1,2,3" if args.smoke else "10,30" if args.quick else "10,30,60")
    args.iters = args.iters or (3 if args.smoke else 5 if args.quick else 20)
    args.warmup = 1 if args.smoke else args.warmup
    if args.compile_budget is None:
        args.compile_budget = 0.0 if args.quick and not args.smoke else 60.0 if args.smoke else 90.0
    args.backend = args.backend or ("cuda" if args.device == "cuda" else "cpp")
    return args


_LINK: str | None = None


def main(argv=None) -> int:
    global DEVICE, _LINK
    args = parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        print("gpu.py: no GPU (torch.cuda.is_available() is False): nothing measured; "
              "`--device cpu --smoke` runs the script's logic on the CPU")
        return 0
    DEVICE = args.device
    _LINK = _link_root()
    os.environ["OMNIFIELD_BACKEND"] = args.backend  # the training's ops dispatch (read per call)
    if args.tf32:
        torch.set_float32_matmul_precision("high")
    result: dict = {"device": torch.cuda.get_device_name(0) if DEVICE == "cuda" else platform.processor() or "cpu",
                    "torch": torch.__version__, "cuda": torch.version.cuda, "python": platform.python_version(),
                    "smoke": args.smoke, "backend": args.backend, "tolerances": TOLERANCES,
                    "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}}
    t_start = time.perf_counter()
    log(f"device {result['device']}, torch {result['torch']}, backend {args.backend}")
    _stage(result, "builds", build_extensions, args.out)
    built = DEVICE != "cuda" or all(b.get("ok") for b in result["builds"].values() if isinstance(b, dict))
    impls = Impls(None if DEVICE == "cuda" else "cpp")
    if not args.skip_parity:
        _stage(result, "parity", lambda: parity(impls, args.smoke), args.out)
        if isinstance(result["parity"], list):
            log(f"parity: {sum(p['pass'] for p in result['parity'])}/{len(result['parity'])} pass")
    if not args.skip_timings:
        _stage(result, "timings", lambda: timings(impls, args), args.out)
    if DEVICE == "cuda":
        torch.cuda.empty_cache()
    if not args.skip_train:
        _stage(result, "train", lambda: train_lego(args), args.out)
    result["total_seconds"] = time.perf_counter() - t_start
    args.out.write_text(json.dumps(result, indent=2, default=str))
    print(format_table(["quantity", "omnifield", "eager torch", "torch.compile", "status", "note / target"],
                       summary_rows(result)), flush=True)
    print(f"total {result['total_seconds']:.0f} s; results: {args.out}", flush=True)
    return 0 if built else 1


if __name__ == "__main__":
    sys.exit(main())
