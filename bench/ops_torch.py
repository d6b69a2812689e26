"""ops_torch.py: the peer for bench_ops_cpu.c -- the same ops at the same
shapes in PyTorch on the CPU with the same thread count. Prints one line
per op, "name milliseconds" (best of several runs), which bench_ops_cpu
--torch reads. Needs only torch; never used at run time.

Usage: python3 bench/ops_torch.py [--threads N] [--only NAME]
(--only times one op: bench_ops_cpu runs it right next to its own timing of
that op, so both see the same load on a shared machine.)
"""
import argparse
import time

import torch
import torch.nn.functional as F


def best_ms(fn, min_total=0.6, max_runs=50):
    fn()
    best, total, runs = float("inf"), 0.0, 0
    while runs < max_runs and (runs < 3 or total < min_total):
        t0 = time.perf_counter()
        fn()
        dt = time.perf_counter() - t0
        total += dt
        best = min(best, dt)
        runs += 1
    return best * 1e3


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--only", default=None)
    args = ap.parse_args()
    want = lambda name: args.only is None or args.only == name
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    r = lambda *s: torch.rand(*s) - 0.5

    with torch.no_grad():
        def conv(name, n, c, h, oc, stride):
            x, w, b = r(n, c, h, h), r(oc, c, 3, 3), r(oc)
            if want(name):
                print(name, best_ms(lambda: F.conv2d(x, w, b, stride=stride, padding=1)), flush=True)

        conv("conv3x3_320_64x64", 1, 320, 64, 320, 1)
        conv("conv3x3_320_64x64_b2", 2, 320, 64, 320, 1)
        conv("conv3x3_1280_8x8", 1, 1280, 8, 1280, 1)
        conv("conv3x3_1280_8x8_b2", 2, 1280, 8, 1280, 1)
        conv("conv3x3s2_320_64x64", 1, 320, 64, 320, 2)

        def attn(name, b, lq, lk, h, d):
            # (B, L, H*D) -> (B, H, L, D) as the diffusers attention processor does
            q, k, v = r(b, lq, h * d), r(b, lk, h * d), r(b, lk, h * d)

            def run():
                qh = q.view(b, lq, h, d).transpose(1, 2)
                kh = k.view(b, lk, h, d).transpose(1, 2)
                vh = v.view(b, lk, h, d).transpose(1, 2)
                o = F.scaled_dot_product_attention(qh, kh, vh)
                return o.transpose(1, 2).reshape(b, lq, h * d)

            if want(name):
                print(name, best_ms(run), flush=True)

        attn("attn_self_4096x8x40", 1, 4096, 4096, 8, 40)
        attn("attn_cross_4096x77x8x40", 1, 4096, 77, 8, 40)
        attn("attn_self_256x8x160", 1, 256, 256, 8, 160)

        def linear(name, m, k, n):
            x, w, b = r(m, k), r(n, k), r(n)
            if want(name):
                print(name, best_ms(lambda: F.linear(x, w, b)), flush=True)

        linear("linear_4096x320_to_2560", 4096, 320, 2560)
        linear("linear_4096x1280_to_320", 4096, 1280, 320)

        x, g, bb = r(1, 320, 64, 64), r(320), r(320)
        if want("group_norm_silu_320_64x64"):
            print("group_norm_silu_320_64x64",
                  best_ms(lambda: F.silu(F.group_norm(x, 32, g, bb, 1e-5))), flush=True)
        xg = r(1, 4096, 2560)

        def geglu():
            a, gate = xg.chunk(2, dim=-1)
            return a * F.gelu(gate)

        if want("geglu_4096x1280"):
            print("geglu_4096x1280", best_ms(geglu), flush=True)
        xt = r(1, 320, 64, 64)
        if want("nchw_to_nlc_320_64x64"):
            print("nchw_to_nlc_320_64x64",
                  best_ms(lambda: xt.permute(0, 2, 3, 1).reshape(1, 4096, 320).contiguous()),
                  flush=True)


if __name__ == "__main__":
    main()
