"""GPU benchmark of the CUDA Gaussian splatting kernels (issue 4), one run on one GPU (an H200).

1. Builds the CUDA extension (``omnifield.cuda.native.load_cuda_extension``; seconds, or "cached").
2. Parity: every CUDA op against its pure-PyTorch reference on the same GPU, forward and backward
   with random upstream gradients; max abs errors and pass/fail against the tolerance table of
   ``tests/conftest.py`` (``gaussians_cuda_forward`` / ``gaussians_cuda_backward``).
3. Timings (CUDA events, warm-up, median of ``--iters``): 1M Gaussians at 1920x1080, SH degree 3,
   forward and forward+backward (covariances, projection, SH, tiles, compositing), for omnifield and
   for gsplat (``gsplat.rasterization``, same Gaussians and camera, eps2d 0.3, packed=False, classic
   mode) when it imports, with the PSNR between the two images; 100k static Gaussians at 800x800;
   4DGS slicing + rendering of 300k Gaussians at 800x800 in frames/s.
4. Prints one table and writes ``bench/results/gpu_gaussians.json``.

Targets (issue 4, H200): forward and forward+backward no slower than gsplat 1.5.3 (2.75 ms / 6.72 ms
measured there), images equal to >= 40 dB, 4DGS >= 400 frames/s.

``python bench/gpu_gaussians.py`` (``--help`` for sizes). Without a GPU (or with ``--no-gpu``) it
prints one "no GPU" line and exits 0. The script finds ``omnifield`` installed, or links the
repository under that name in a temporary folder (a bare GPU machine with a copy of the tree).
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
DEVICE = "cuda"  # everything below runs here (a CPU emulation of the kernels may set "cpu")
DEFAULT_TOL = {"gaussians_cuda_forward": {"rtol": 1e-4, "atol": 1e-5},
               "gaussians_cuda_backward": {"rtol": 1e-4, "atol": 1e-4}}


def format_table(headers: list[str], rows: list[list]) -> str:
    """Aligned plain-text table; floats with 3 decimals, None as '-'."""
    def cell(v) -> str:
        if v is None:
            return "-"
        if isinstance(v, bool):
            return "yes" if v else "no"
        if isinstance(v, float):
            return f"{v:.3f}" if v == 0 or 1e-2 <= abs(v) < 1e5 else f"{v:.2e}"
        return str(v)

    text = [[cell(v) for v in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in text)) if text else len(h) for i, h in enumerate(headers)]
    line = lambda cells: "  ".join(c.ljust(w) for c, w in zip(cells, widths))  # noqa: E731
    return "\n".join([line(headers), line(["-" * w for w in widths]), *(line(r) for r in text)])


def _import_omnifield():
    """Import omnifield, linking the repository as ``omnifield`` in a temp folder when not installed."""
    import importlib.util
    import tempfile

    if importlib.util.find_spec("omnifield") is None:
        link_root = Path(tempfile.mkdtemp(prefix="omnifield_path_"))
        (link_root / "omnifield").symlink_to(REPO, target_is_directory=True)
        sys.path.insert(0, str(link_root))
    import omnifield.cuda.cuda_gaussians as cg  # noqa: F401

    return cg


def _tolerances() -> dict:
    import importlib.util

    try:
        spec = importlib.util.spec_from_file_location("omnifield_tests_conftest", REPO / "tests" / "conftest.py")
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        return {k: mod.TOLERANCES[k] for k in DEFAULT_TOL}
    except Exception:  # noqa: BLE001 - conftest needs pytest; the defaults are the same numbers
        return DEFAULT_TOL


def time_ms(fn, warmup: int, iters: int) -> float:
    """Median milliseconds of ``fn()`` between CUDA events, after ``warmup`` calls."""
    for _ in range(warmup):
        fn()
    if DEVICE != "cuda":  # wall clock off the GPU (smoke runs only)
        times = []
        for _ in range(iters):
            t0 = time.perf_counter()
            fn()
            times.append(1000 * (time.perf_counter() - t0))
        return statistics.median(times)
    torch.cuda.synchronize()
    times = []
    for _ in range(iters):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


# ----------------------------------------------------------------------------------------------
# Scenes


def make_camera(width: int, height: int, focal: float):
    """Identity world-to-camera (OpenCV) and pinhole intrinsics with the principal point at the centre."""
    K = torch.tensor([[focal, 0, width / 2], [0, focal, height / 2], [0, 0, 1]], dtype=torch.float32, device=DEVICE)
    return torch.eye(4, device=DEVICE), K


def make_static(n: int, width: int, height: int, focal: float, seed: int = 0) -> dict:
    """``n`` Gaussians filling the frustum (depth 2..10), a few pixels wide, SH degree 3."""
    g = torch.Generator(device="cpu").manual_seed(seed)
    z = torch.rand(n, generator=g) * 8 + 2
    x = (torch.rand(n, generator=g) * 1.2 - 0.6) * width / focal * z
    y = (torch.rand(n, generator=g) * 1.2 - 0.6) * height / focal * z
    sh = torch.randn(n, 16, 3, generator=g) * 0.1
    sh[:, 0] = torch.randn(n, 3, generator=g) * 0.6
    scene = {
        "means": torch.stack([x, y, z], -1),
        "quats": torch.randn(n, 4, generator=g),
        "scales": torch.exp(torch.rand(n, 3, generator=g) * 2.5 - 6.0),
        "opacities": torch.sigmoid(torch.randn(n, generator=g)),
        "sh": sh,
    }
    return {k: v.to(DEVICE).contiguous() for k, v in scene.items()}


def make_dynamic(n: int, width: int, focal: float, seed: int = 1, n_time: int = 2) -> dict:
    """``n`` 4D Gaussians over t in [0, 1] (temporal scale ~0.15), spherindrical SH degree 3 x n_time."""
    g = torch.Generator(device="cpu").manual_seed(seed)
    z = torch.rand(n, generator=g) * 6 + 2
    xy = (torch.rand(n, 2, generator=g) * 1.2 - 0.6) * width / focal * z[:, None]
    means4 = torch.cat([xy, z[:, None], torch.rand(n, 1, generator=g)], dim=1)
    scales4 = torch.cat([torch.exp(torch.rand(n, 3, generator=g) * 2 - 5.0),
                         torch.exp(torch.randn(n, 1, generator=g) * 0.3 - 1.9)], dim=1)
    scene = {
        "means4": means4, "scales4": scales4,
        "q_left": torch.randn(n, 4, generator=g) * 0.1 + torch.tensor([1.0, 0, 0, 0]),
        "q_right": torch.randn(n, 4, generator=g) * 0.1 + torch.tensor([1.0, 0, 0, 0]),
        "opacities": torch.sigmoid(torch.randn(n, generator=g)),
        "coeffs": torch.randn(n, 16 * n_time, 3, generator=g) * 0.2,
    }
    return {k: v.to(DEVICE).contiguous() for k, v in scene.items()}


def render_static(ops, scene: dict, viewmat, K, width: int, height: int, sh_degree: int = 3):
    """covariances -> projection -> SH colour -> tiles -> compositing (rgb, black background)."""
    covars = ops.quat_scale_to_covar(scene["quats"], scene["scales"])
    means2d, conics, depths, radii, _ = ops.project_gaussians(scene["means"], covars, viewmat, K, width, height,
                                                              0.01, 1e10, 0.3, 0.0, False)
    campos = -viewmat[:3, :3].T @ viewmat[:3, 3]
    colors = (ops.spherical_harmonics(sh_degree, scene["means"] - campos, scene["sh"]) + 0.5).clamp_min(0.0)
    offsets, ids = ops.isect_tiles(means2d, radii, depths, width, height, 16)
    image, _ = ops.rasterize_to_pixels(means2d, conics, colors, scene["opacities"], width, height, 16, offsets, ids)
    return image


def render_dynamic(cg, scene: dict, t: float, viewmat, K, width: int, height: int, n_time: int = 2):
    """4DGS frame: slice at t, cull marginal <= 0.05, spherindrical colour, then the static pipeline."""
    means3, covars3, marginal = cg.slice_gaussians_4d(scene["means4"], scene["scales4"], scene["q_left"],
                                                      scene["q_right"], t)
    keep = torch.nonzero(marginal > 0.05).squeeze(1)
    means3, covars3 = means3[keep], covars3[keep]
    opacities = scene["opacities"][keep] * marginal[keep]
    campos = -viewmat[:3, :3].T @ viewmat[:3, 3]
    dt = t - scene["means4"][keep, 3]
    colors = cg.spherindrical_harmonics(3, n_time, means3 - campos, dt, 1.0, scene["coeffs"][keep])
    colors = (colors + 0.5).clamp_min(0.0)
    means2d, conics, depths, radii, _ = cg.project_gaussians(means3, covars3, viewmat, K, width, height)
    offsets, ids = cg.isect_tiles(means2d, radii, depths, width, height, 16)
    image, _ = cg.rasterize_to_pixels(means2d, conics, colors, opacities, width, height, 16, offsets, ids)
    return image


# ----------------------------------------------------------------------------------------------
# Parity


def _max_err(got, ref) -> float:
    return float((got - ref).abs().max()) if ref is not None and ref.numel() else 0.0


def _ok(got, ref, tol, relative_atol=True) -> bool:
    if ref is None or ref.numel() == 0:
        return True
    atol = tol["atol"] * (max(1.0, float(ref.abs().max())) if relative_atol else 1.0)
    return bool(torch.allclose(got, ref, rtol=tol["rtol"], atol=atol))


def _run_pair(fn, inputs: list, n_leaves: int, seed: int):
    """fn(*leaves, *rest) -> (float outputs, grads) with upstream grads from ``seed``."""
    leaves = [t.detach().clone().requires_grad_() for t in inputs[:n_leaves]]
    outs = [o for o in fn(*leaves, *inputs[n_leaves:]) if o is not None and o.is_floating_point()]
    gen = torch.Generator(device=outs[0].device).manual_seed(seed)
    loss = sum((o * torch.randn(o.shape, generator=gen, device=o.device)).sum() for o in outs)
    grads = torch.autograd.grad(loss, leaves, allow_unused=True)
    return [o.detach() for o in outs], [torch.zeros_like(l) if g is None else g for l, g in zip(leaves, grads)]


def parity(cg, tol: dict, w: int = 160, h: int = 120, n: int = 4000) -> list[dict]:
    """Each op (CUDA vs reference): max |fwd| and |bwd| errors, pass/fail against the table."""
    from omnifield.cuda.reference import gaussians as ref
    from omnifield.cuda.reference import gaussians4d as ref4

    torch.manual_seed(0)
    viewmat, K = make_camera(w, h, 150.0)
    viewmat[:3, 3] = torch.tensor([0.1, -0.05, 0.2], device=DEVICE)
    s = make_static(n, w, h, 150.0, seed=3)
    with torch.no_grad():
        covars = ref.quat_scale_to_covar(s["quats"], s["scales"])
        m2d, con, dep, rad, _ = ref.project_gaussians(s["means"], covars, viewmat, K, w, h)
        off, ids = ref.isect_tiles(m2d, rad, dep, w, h, 16)
    colors4 = torch.rand(n, 4, device=DEVICE)
    bg4 = torch.rand(4, device=DEVICE)
    d = make_dynamic(n, w, 150.0)
    dirs = torch.randn(n, 3, device=DEVICE)
    cases = [
        ("quat_scale_to_covar", lambda o, *a: o.quat_scale_to_covar(*a), [s["quats"], s["scales"]], 2, False),
        ("project_gaussians", lambda o, m, c, v: o.project_gaussians(m, c, v, K, w, h, antialias=True),
         [s["means"], covars, viewmat], 3, True),
        ("spherical_harmonics(3)", lambda o, x, c: (o.spherical_harmonics(3, x, c),), [dirs, s["sh"]], 2, False),
        ("rasterize_to_pixels(C=4)", lambda o, *a: o.rasterize_to_pixels(*a[:4], w, h, 16, off, ids, a[4]),
         [m2d, con, colors4, s["opacities"], bg4], 5, False),
        ("slice_gaussians_4d", lambda o, *a: o.slice_gaussians_4d(*a, 0.4),
         [d["means4"], d["scales4"], d["q_left"], d["q_right"]], 4, False),
    ]
    rows = []
    for name, fn, inputs, n_leaves, symmetrize in cases:
        impl = ref4 if name.startswith("slice") else ref
        try:
            got_o, got_g = _run_pair(lambda *a: fn(cg, *a), inputs, n_leaves, 7)
            ref_o, ref_g = _run_pair(lambda *a: fn(impl, *a), inputs, n_leaves, 7)
            if symmetrize:  # projection: compare visible Gaussians; the reference's covars grad is one-sided
                vis = (cg.project_gaussians(inputs[0], inputs[1], viewmat, K, w, h)[3] > 0)
                got_o = [o[vis] if o.shape[0] == n else o for o in got_o]
                ref_o = [o[vis] if o.shape[0] == n else o for o in ref_o]
                ref_g[1] = 0.5 * (ref_g[1] + ref_g[1].transpose(-1, -2))
            fwd_err = max(_max_err(a, b) for a, b in zip(got_o, ref_o))
            bwd_err = max(_max_err(a, b) for a, b in zip(got_g, ref_g))
            ok = all(_ok(a, b, tol["gaussians_cuda_forward"]) for a, b in zip(got_o, ref_o)) and all(
                _ok(a, b, tol["gaussians_cuda_backward"]) for a, b in zip(got_g, ref_g))
            rows.append({"op": name, "fwd_max_err": fwd_err, "bwd_max_err": bwd_err, "pass": ok})
        except Exception as exc:  # noqa: BLE001 - report and go on to the timings
            rows.append({"op": name, "fwd_max_err": None, "bwd_max_err": None, "pass": False, "error": repr(exc)})
    return rows


# ----------------------------------------------------------------------------------------------
# Timings


def _static_timings(cg, scene, viewmat, K, w, h, args, label) -> dict:
    leaves = {k: v.clone().requires_grad_() for k, v in scene.items()}
    with torch.no_grad():
        image = render_static(cg, scene, viewmat, K, w, h)
    upstream = torch.randn_like(image)

    def fwd():
        with torch.no_grad():
            render_static(cg, scene, viewmat, K, w, h)

    def fwd_bwd():
        for v in leaves.values():
            v.grad = None
        (render_static(cg, leaves, viewmat, K, w, h) * upstream).sum().backward()

    return {"label": label, "forward_ms": time_ms(fwd, args.warmup, args.iters),
            "forward_backward_ms": time_ms(fwd_bwd, args.warmup, args.iters), "image": image}


def _gsplat_timings(scene, viewmat, K, w, h, args, label) -> dict:
    import gsplat

    def render(s):
        colors, _, _ = gsplat.rasterization(
            s["means"], s["quats"], s["scales"], s["opacities"], s["sh"], viewmat[None], K[None], w, h,
            near_plane=0.01, far_plane=1e10, eps2d=0.3, sh_degree=3, packed=False, radius_clip=0.0,
            rasterize_mode="classic", render_mode="RGB", tile_size=16)
        return colors[0]

    t0 = time.perf_counter()
    with torch.no_grad():
        image = render(scene)  # first call: gsplat's JIT build
    torch.cuda.synchronize()
    first_call_s = time.perf_counter() - t0
    leaves = {k: v.clone().requires_grad_() for k, v in scene.items()}
    upstream = torch.randn_like(image)

    def fwd():
        with torch.no_grad():
            render(scene)

    def fwd_bwd():
        for v in leaves.values():
            v.grad = None
        (render(leaves) * upstream).sum().backward()

    return {"label": label, "version": getattr(gsplat, "__version__", "?"), "first_call_s": first_call_s,
            "forward_ms": time_ms(fwd, args.warmup, args.iters),
            "forward_backward_ms": time_ms(fwd_bwd, args.warmup, args.iters), "image": image}


def psnr(a, b) -> float:
    mse = float(((a.float() - b.float()) ** 2).mean())
    return float("inf") if mse == 0 else 10 * math.log10(1.0 / mse)


def timings(cg, args) -> dict:
    out: dict = {}
    for key, (n, w, h, focal) in {"static_1m_1080p": (args.n_large, 1920, 1080, 1100.0),
                                  "static_100k_800": (args.n_small, 800, 800, 700.0)}.items():
        viewmat, K = make_camera(w, h, focal)
        scene = make_static(n, w, h, focal)
        res = {"gaussians": n, "width": w, "height": h}
        with torch.no_grad():
            covars = cg.quat_scale_to_covar(scene["quats"], scene["scales"])
            m2d, _, depths, radii, _ = cg.project_gaussians(scene["means"], covars, viewmat, K, w, h)
            res["visible"] = int((radii > 0).sum())
            res["intersections"] = int(cg.isect_tiles(m2d, radii, depths, w, h, 16)[1].numel())
            del covars, m2d, depths, radii
        ours = _static_timings(cg, scene, viewmat, K, w, h, args, "omnifield")
        res["omnifield"] = {k: v for k, v in ours.items() if k != "image"}
        if not args.skip_gsplat:
            try:
                theirs = _gsplat_timings(scene, viewmat, K, w, h, args, "gsplat")
                res["gsplat"] = {k: v for k, v in theirs.items() if k != "image"}
                res["psnr_vs_gsplat_db"] = psnr(ours["image"], theirs["image"])
            except Exception as exc:  # noqa: BLE001 - gsplat missing or failing: omnifield numbers stand
                res["gsplat"] = {"error": repr(exc)[:300]}
        out[key] = res
        del scene
        torch.cuda.empty_cache()
    w = h = 800
    viewmat, K = make_camera(w, h, 700.0)
    scene = make_dynamic(args.n_dynamic, w, 700.0)
    frame = {"t": 0.5}

    def render_frame():
        with torch.no_grad():
            render_dynamic(cg, scene, frame["t"], viewmat, K, w, h)
        frame["t"] = (frame["t"] + 0.01) % 1.0

    ms = time_ms(render_frame, args.warmup, args.iters)
    with torch.no_grad():
        kept = int((cg.slice_gaussians_4d(scene["means4"], scene["scales4"], scene["q_left"], scene["q_right"],
                                          0.5)[2] > 0.05).sum())
    out["dynamic_300k_800"] = {"gaussians": args.n_dynamic, "visible_at_t05": kept, "frame_ms": ms,
                               "frames_per_s": 1000.0 / ms}
    return out


def summary_rows(result: dict) -> list[list]:
    """The final table: one row per measured quantity, with its target where the issue sets one."""
    rows = [["build (s)", result.get("build_seconds"), "cached" if result.get("build_cached") else "", ""]]
    for p in result.get("parity", []):
        note = p.get("error", "")[:60] if p.get("fwd_max_err") is None else f"bwd max err {p['bwd_max_err']:.2e}"
        rows.append([f"parity {p['op']} (fwd max err)", p.get("fwd_max_err"), "pass" if p["pass"] else "FAIL", note])
    t = result.get("timings", {})
    for key, target_f, target_fb in (("static_1m_1080p", 2.75, 6.72), ("static_100k_800", 1.37, None)):
        if key not in t:
            continue
        r = t[key]
        if "intersections" in r:
            rows.append([f"{key} visible / intersections", f"{r['visible']} / {r['intersections']}", "", ""])
        rows.append([f"{key} omnifield fwd (ms)", r["omnifield"]["forward_ms"], "", f"gsplat on H200: {target_f}"])
        rows.append([f"{key} omnifield fwd+bwd (ms)", r["omnifield"]["forward_backward_ms"], "",
                     f"gsplat on H200: {target_fb}" if target_fb else ""])
        g = r.get("gsplat", {})
        if "forward_ms" in g:
            rows.append([f"{key} gsplat {g['version']} first call (s)", g["first_call_s"], "",
                         "includes its JIT build"])
            rows.append([f"{key} gsplat {g['version']} fwd (ms)", g["forward_ms"], "", ""])
            rows.append([f"{key} gsplat fwd+bwd (ms)", g["forward_backward_ms"], "", ""])
            rows.append([f"{key} PSNR omnifield vs gsplat (dB)", r["psnr_vs_gsplat_db"], "", ">= 40"])
        elif g:
            rows.append([f"{key} gsplat", None, "skipped", g.get("error", "")[:60]])
    if "dynamic_300k_800" in t:
        rows.append(["4dgs 300k 800x800 (frames/s)", t["dynamic_300k_800"]["frames_per_s"], "", ">= 400"])
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "gpu_gaussians.json")
    ap.add_argument("--iters", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--n-large", type=int, default=1_000_000)
    ap.add_argument("--n-small", type=int, default=100_000)
    ap.add_argument("--n-dynamic", type=int, default=300_000)
    ap.add_argument("--skip-gsplat", action="store_true")
    ap.add_argument("--skip-parity", action="store_true")
    ap.add_argument("--no-gpu", action="store_true", help="take the no-GPU path (for tests)")
    args = ap.parse_args(argv)
    if args.no_gpu or not torch.cuda.is_available():
        print("gpu_gaussians: no GPU (torch.cuda.is_available() is False or --no-gpu): nothing measured")
        return 0
    cg = _import_omnifield()
    from omnifield.cuda import native

    result: dict = {"device": torch.cuda.get_device_name(0), "torch": torch.__version__,
                    "cuda": torch.version.cuda, "python": platform.python_version()}
    cached = native.cuda_build_key("gaussians")
    result["build_cached"] = any((native.cache_root() / f"gaussians-cuda-{cached}").glob("*.so"))
    t0 = time.perf_counter()
    ext = native.load_cuda_extension("gaussians")
    result["build_seconds"] = time.perf_counter() - t0
    if ext is None:
        result["build_error"] = native.last_cuda_error("gaussians")
        print(f"gpu_gaussians: the CUDA build failed:\n{result['build_error']}")
    else:
        if not args.skip_parity:
            result["parity"] = parity(cg, _tolerances())
        result["timings"] = timings(cg, args)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2, default=str))
    print(format_table(["quantity", "value", "status", "note / target"], summary_rows(result)))
    print(f"results: {args.out}")
    return 0 if ext is not None else 1


if __name__ == "__main__":
    sys.exit(main())
