#!/usr/bin/env python3
"""plot_loss.py: the loss curve of a training run as a PNG (Pillow only).

    python3 tools/plot_loss.py OUTPUT_DIR/metrics.jsonl docs/img/loss.png [--title T] [--smooth 20]

metrics.jsonl has one JSON line per optimizer step (written by
`sdc train dreambooth`); a resumed run appends, so the last line of each
step wins. Draws the per-step loss (light), its moving average over
--smooth steps (dark), the prior-preservation part when present (dashed
blue), and a vertical mark at every resume (an {"event": "resume"} line).
"""
import argparse
import json

from PIL import Image, ImageDraw

W, H, ML, MR, MT, MB = 900, 480, 70, 20, 40, 50


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("metrics")
    ap.add_argument("png")
    ap.add_argument("--title", default="DreamBooth loss")
    ap.add_argument("--smooth", type=int, default=20)
    a = ap.parse_args()
    rows, resumes = {}, []
    for line in open(a.metrics):
        line = line.strip()
        if not line:
            continue
        r = json.loads(line)
        if r.get("event") == "resume":
            resumes.append(r["step"])
            continue
        rows[r["step"]] = r
    steps = sorted(rows)
    loss = [rows[s]["loss"] for s in steps]
    prior = [rows[s].get("loss_prior", 0.0) for s in steps]
    sm = []
    for i in range(len(loss)):
        w = loss[max(0, i - a.smooth + 1):i + 1]
        sm.append(sum(w) / len(w))
    ymax = max(loss) * 1.05
    ymin = 0.0
    x0, x1 = steps[0], steps[-1]
    img = Image.new("RGB", (W, H), "white")
    d = ImageDraw.Draw(img)

    def px(s, v):
        x = ML + (s - x0) / max(1, x1 - x0) * (W - ML - MR)
        y = H - MB - (v - ymin) / (ymax - ymin) * (H - MT - MB)
        return x, y

    d.rectangle([ML, MT, W - MR, H - MB], outline="black")
    for k in range(6):  # y ticks
        v = ymin + (ymax - ymin) * k / 5
        _, y = px(x0, v)
        d.line([ML - 5, y, ML, y], fill="black")
        d.text((5, y - 6), f"{v:.3f}", fill="black")
    for k in range(6):  # x ticks
        s = x0 + (x1 - x0) * k / 5
        x, _ = px(s, ymin)
        d.line([x, H - MB, x, H - MB + 5], fill="black")
        d.text((x - 10, H - MB + 8), f"{int(s)}", fill="black")
    d.text((W // 2 - 20, H - 20), "step", fill="black")
    d.text((ML, 10), f"{a.title}  (light: per step, dark: mean of {a.smooth}, blue: prior part"
                     f"{', red: resumed' if resumes else ''})", fill="black")
    for r in resumes:
        x, _ = px(r, 0)
        d.line([x, MT, x, H - MB], fill=(220, 0, 0), width=2)
    d.line([px(s, v) for s, v in zip(steps, loss)], fill=(170, 170, 170), width=1)
    if any(prior):
        pts = [px(s, v) for s, v in zip(steps, prior)]
        for i in range(0, len(pts) - 1, 2):
            d.line([pts[i], pts[i + 1]], fill=(40, 90, 220), width=1)
    d.line([px(s, v) for s, v in zip(steps, sm)], fill=(0, 0, 0), width=2)
    img.save(a.png)
    print(f"{a.png}: {len(steps)} steps, loss {loss[0]:.4f} -> mean of last {a.smooth} {sm[-1]:.4f}, "
          f"resumed at {resumes}")


if __name__ == "__main__":
    main()
