"""Labelled image strips and GIFs: how a person compares a reconstruction with its reference.

Used by ``streamrecon replay`` (the received series against the scan's truth)
and ``streamrecon evaluate`` (each method against the fully sampled frame).
Each row has its own grey scale; error rows are ``|image - reference|``
shown :data:`ERROR_GAIN` times brighter. Fallback frames (a model series'
frame that is the conventional image) are marked on their tiles so a series
that is partly classical cannot pass for the model's.

Pillow is imported inside the drawing functions: importing this module for
its constants must not cost Pillow's import.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np


def to_uint8(frames: np.ndarray, vmax: float) -> np.ndarray:
    """Magnitudes as 8-bit grey, ``vmax`` white (clipped above)."""
    return (np.clip(np.abs(frames) / max(vmax, 1e-12), 0, 1) * 255).astype(np.uint8)


ERROR_GAIN = 5.0
LABEL_WIDTH = 150
TITLE_HEIGHT = 14


def _row_scale(frames: np.ndarray) -> float:
    """One grey scale for a whole row: its 99.5th percentile (a few hot pixels do not darken the row)."""
    v = float(np.percentile(np.abs(frames), 99.5))
    return v if v > 0 else float(np.abs(frames).max())


def picture_rows(rows: dict[str, np.ndarray], titles: dict[str, str] | None = None,
                 errors: bool = True) -> list[tuple[str, np.ndarray, float]]:
    """``(title, frames, grey scale)`` per strip row: every image row, then ``|row - reference| x5`` of each.

    Each image row has its own scale (one for all its frames); error rows
    use the reference's scale divided by :data:`ERROR_GAIN`, so an error row
    that looks dark is small against the reference.
    """
    titles = titles or {}
    out = [(titles.get(k, k), np.abs(v), _row_scale(v)) for k, v in rows.items()]
    ref = rows.get("reference")
    if errors and ref is not None:
        ref_scale = _row_scale(ref)
        n = min(len(v) for v in rows.values())
        for k, v in rows.items():
            if k != "reference":
                err = np.abs(np.abs(v[:n]) - np.abs(ref[:n]))
                out.append((f"error x{ERROR_GAIN:g} {titles.get(k, k)}", err, ref_scale / ERROR_GAIN))
    return out


def _labelled(tiles: list[np.ndarray], label: str, width: int = LABEL_WIDTH) -> np.ndarray:
    """A row of uint8 tiles with ``label`` written in a left margin."""
    from PIL import Image, ImageDraw

    row = np.concatenate(tiles, axis=1)
    canvas = Image.new("L", (width + row.shape[1], row.shape[0]), 0)
    canvas.paste(Image.fromarray(row), (width, 0))
    draw = ImageDraw.Draw(canvas)
    for i, chunk in enumerate(_wrap(label, width // 6)):
        draw.text((3, 2 + 11 * i), chunk, fill=255)
    return np.asarray(canvas)


def _wrap(text: str, chars: int) -> list[str]:
    lines, line = [], ""
    for word in text.split():
        if line and len(line) + 1 + len(word) > chars:
            lines.append(line)
            line = word
        else:
            line = f"{line} {word}".strip()
    return lines + [line] if line else lines


def titled(frame: np.ndarray, title: str) -> np.ndarray:
    """A uint8 frame with ``title`` written in a band above it."""
    from PIL import Image, ImageDraw

    canvas = Image.new("L", (frame.shape[1], frame.shape[0] + TITLE_HEIGHT), 0)
    canvas.paste(Image.fromarray(frame), (0, TITLE_HEIGHT))
    ImageDraw.Draw(canvas).text((2, 1), title[: max(1, frame.shape[1] // 6)], fill=255)
    return np.asarray(canvas)


FALLBACK_MARK = "FALLBACK"


def _marked(tile: np.ndarray) -> np.ndarray:
    """A uint8 tile with a white frame and ``FALLBACK`` in its corner: not the model's image."""
    from PIL import Image, ImageDraw

    im = Image.fromarray(tile)
    draw = ImageDraw.Draw(im)
    h, w = tile.shape
    draw.rectangle([0, 0, w - 1, h - 1], outline=255, width=2)
    text = FALLBACK_MARK[: max(1, (w - 6) // 6)]
    draw.rectangle([2, 2, 4 + 6 * len(text), 13], fill=0)
    draw.text((3, 2), text, fill=255)
    return np.asarray(im)


def _tiles(frames: np.ndarray, scale: float, marks: list | None) -> list[np.ndarray]:
    tiles = list(to_uint8(frames, scale))
    if marks:
        tiles = [_marked(t) if i < len(marks) and marks[i] else t for i, t in enumerate(tiles)]
    return tiles


def _save_gif(path: Path, frames: list[np.ndarray]) -> None:
    from PIL import Image

    pics = [Image.fromarray(f) for f in frames]
    pics[0].save(path, save_all=True, append_images=pics[1:], duration=60, loop=0)


def save_pictures(out_dir: Path, rows: dict[str, np.ndarray], stem: str, *, max_frames: int = 12,
                  titles: dict[str, str] | None = None, errors: bool = True,
                  marks: dict[str, list] | None = None) -> list[Path]:
    """Labelled pictures of one slice: a PNG strip, one GIF per row, one side-by-side GIF.

    ``rows`` maps a key (``reference``, ``zero-filled``, ``series0``...) to
    ``(frames, ny, nx)`` magnitudes, ``titles`` a key to its label. The strip
    has one labelled row per entry (up to ``max_frames`` frames across, the
    frame numbers on top) and, with ``errors``, an ``error x5`` row per
    entry against the reference (:func:`picture_rows`). The side-by-side
    GIF (``<stem>_side_by_side.gif``) shows reference, the conventional
    series (series 0) and the last series (the model's) frame by frame,
    each on its own row scale, titled. ``marks`` maps a row key to a per-frame
    list, true where that frame is a fallback: its tiles (and its error
    tiles) get a white frame and ``FALLBACK``, its GIF frames ``FALLBACK`` in
    the title.
    """
    written = []
    marks = marks or {}
    table = picture_rows(rows, titles, errors)
    # picture_rows' order: every image row, then the error row of each row but the reference
    row_marks = [marks.get(k) for k in rows] + ([marks.get(k) for k in rows if k != "reference"]
                                                if errors and "reference" in rows else [])
    n_all = min(len(r) for r in rows.values())
    n = min(max_frames, n_all)
    picks = np.linspace(0, n_all - 1, n).round().astype(int)
    tile_w = next(iter(rows.values())).shape[-1]
    header = _labelled([titled(np.zeros((0, tile_w), np.uint8), f"t={t}") for t in picks], "frame")
    strip = [header] + [_labelled(_tiles(frames[picks], scale, [m[i] if i < len(m) else None for i in picks] if m else None),
                                  title)
                        for (title, frames, scale), m in zip(table, row_marks)]
    from PIL import Image

    p = out_dir / f"{stem}_strip.png"
    Image.fromarray(np.concatenate(strip, axis=0)).save(p)
    written.append(p)
    for (key, r), (title, _, scale) in zip(rows.items(), table):
        if len(r) < 2:
            continue
        g = out_dir / f"{stem}_{key}.gif"
        m = marks.get(key) or []
        _save_gif(g, [titled(f, f"{FALLBACK_MARK} {title}" if i < len(m) and m[i] else title)
                      for i, f in enumerate(_tiles(r, scale, m))])
        written.append(g)
    series = sorted(k for k in rows if k.startswith("series"))
    side = ["reference"] + ([series[0]] if series else []) + ([series[-1]] if len(series) > 1 else [])
    if len(side) > 1 and n_all > 1:
        scales = dict((k, sc) for (k, _), (_, _, sc) in zip(rows.items(), table))
        names = {k: t for k, (t, _, _) in zip(rows, table)}
        def tile(k: str, t: int) -> np.ndarray:
            fell_back = t < len(marks.get(k) or []) and marks[k][t]
            picture = to_uint8(rows[k][t], scales[k])
            return titled(_marked(picture) if fell_back else picture, f"{FALLBACK_MARK} {names[k]}" if fell_back else names[k])

        frames = [np.concatenate([tile(k, t) for k in side], axis=1) for t in range(n_all)]
        g = out_dir / f"{stem}_side_by_side.gif"
        _save_gif(g, frames)
        written.append(g)
    return written


__all__ = ["to_uint8", "titled", "picture_rows", "save_pictures", "ERROR_GAIN", "LABEL_WIDTH", "TITLE_HEIGHT",
           "FALLBACK_MARK"]
