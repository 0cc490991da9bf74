"""Draw the SVG figures of docs/concepts.md (plain Python, no dependency).

    python docs/_scripts/figures.py            # writes docs/img/*.svg
    python docs/_scripts/figures.py --check    # exit 1 if a committed figure is out of date

tests/project/test_docs.py runs the check, so the pictures never drift from this script.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Dict, List, Sequence, Tuple

IMG = Path(__file__).resolve().parents[1] / "img"

# three sequences of lengths 5, 8, 3 plus a fourth of 6 for the padded picture
COLORS = ["#4c78a8", "#f58518", "#54a24b", "#b279a2"]
PAD = "#e6e6e6"
FONT = "font-family:DejaVu Sans,Helvetica,Arial,sans-serif"


def _svg(width: int, height: int, body: List[str]) -> str:
    head = (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" role="img">'
    )
    return "\n".join([head, f'<rect width="{width}" height="{height}" fill="white"/>', *body, "</svg>", ""])


def _text(x: float, y: float, text: str, size: int = 13, anchor: str = "start", weight: str = "normal") -> str:
    return (
        f'<text x="{x:g}" y="{y:g}" font-size="{size}" text-anchor="{anchor}" font-weight="{weight}" '
        f'style="{FONT}">{text}</text>'
    )


def _cell(x: float, y: float, w: float, h: float, fill: str, label: str = "") -> List[str]:
    out = [f'<rect x="{x:g}" y="{y:g}" width="{w:g}" height="{h:g}" fill="{fill}" stroke="white" stroke-width="1.5"/>']
    if label:
        out.append(_text(x + w / 2, y + h / 2 + 4, label, size=11, anchor="middle"))
    return out


def padding_vs_packing() -> str:
    lengths = [5, 8, 3, 6]
    names = "abcd"
    cell, gap = 22, 28
    body: List[str] = [_text(10, 22, "padded: batch of 4, each row padded to the longest (8)", 14, weight="bold")]
    top = 34
    width = max(lengths)
    for row, (n, name) in enumerate(zip(lengths, names)):
        for t in range(width):
            fill = COLORS[row] if t < n else PAD
            body += _cell(10 + t * cell, top + row * cell, cell, cell, fill, f"{name}{t}" if t < n else "")
    slots = len(lengths) * width
    real = sum(lengths)
    body.append(_text(10 + width * cell + 14, top + 2 * cell + 4, f"{slots} slots, {real} tokens:", 13))
    body.append(_text(10 + width * cell + 14, top + 2 * cell + 22, f"{1 - real / slots:.0%} padding", 13, weight="bold"))

    top2 = top + len(lengths) * cell + gap + 12
    body.append(_text(10, top2 - 12, "packed: one row, budget 22 tokens, boundaries in cu_seqlens", 14, weight="bold"))
    x = 10.0
    bounds = [0]
    for row, (n, name) in enumerate(zip(lengths, names)):
        for t in range(n):
            body += _cell(x, top2, cell, cell, COLORS[row], f"{name}{t}")
            x += cell
        bounds.append(bounds[-1] + n)
    for b in bounds:
        bx = 10 + b * cell
        body.append(f'<line x1="{bx}" y1="{top2 - 4}" x2="{bx}" y2="{top2 + cell + 4}" stroke="black" stroke-width="2"/>')
        body.append(_text(bx, top2 + cell + 20, str(b), 12, anchor="middle"))
    body.append(_text(10, top2 + cell + 42, f"cu_seqlens = {bounds}: {real} slots, {real} tokens, 0% padding", 13))
    return _svg(10 + 24 * cell + 10, int(top2 + cell + 56), body)


def attention_mask() -> str:
    lengths = [5, 8, 3]
    total = sum(lengths)
    cell = 22
    left, top = 50, 60
    seg: List[int] = [i for i, n in enumerate(lengths) for _ in range(n)]
    starts: Dict[int, int] = {}
    for i, s in enumerate(seg):
        starts.setdefault(s, i)
    body = [
        _text(10, 20, "what each query token may attend to in one packed row", 14, weight="bold"),
        _text(10, 40, "coloured: allowed (causal, same sequence); grey: what a plain causal mask would leak", 12),
    ]
    for q in range(total):
        for k in range(total):
            if k > q:
                fill = "white"
            elif seg[k] == seg[q]:
                fill = COLORS[seg[q]]
            else:
                fill = "#c8c8c8"
            body.append(
                f'<rect x="{left + k * cell}" y="{top + q * cell}" width="{cell}" height="{cell}" '
                f'fill="{fill}" stroke="#f4f4f4" stroke-width="1"/>'
            )
        body.append(_text(left - 8, top + q * cell + 13, f"q{q}", 10, anchor="end"))
    for k in range(total):
        body.append(_text(left + k * cell + cell / 2, top + total * cell + 14, f"k{k}", 8, anchor="middle"))
    y = top + total * cell + 36
    body.append(_text(left, y, "varlen attention computes only the coloured blocks (no T x T mask is built)", 12))
    return _svg(max(left + total * cell + 20, 600), y + 14, body)


FIGURES = {"padding-vs-packing.svg": padding_vs_packing, "attention-mask.svg": attention_mask}


def main(argv: Sequence[str] = ()) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="compare with the committed files instead of writing")
    parser.add_argument("--out", type=Path, default=IMG)
    args = parser.parse_args(list(argv))
    stale: List[Tuple[str, str]] = []
    for name, draw in FIGURES.items():
        svg = draw()
        path = args.out / name
        if args.check:
            if not path.is_file() or path.read_text() != svg:
                stale.append((name, str(path)))
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(svg)
            print(f"wrote {path}")
    for name, path in stale:
        print(f"{path} is out of date: run python docs/_scripts/figures.py", file=sys.stderr)
    return 1 if stale else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
