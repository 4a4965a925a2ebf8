"""The targets as a plot: each measured ratio as a share of its limit (1 = the target)."""

from __future__ import annotations

import math


def plot(targets: list[dict], meta: dict, path: str) -> bool:
    """Write the plot to ``path`` (SVG or PNG, by suffix); False without matplotlib."""
    try:
        import matplotlib
    except ImportError:
        return False
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams["svg.fonttype"] = "none"  # text stays text: small, searchable files
    rows = list(reversed(targets))
    fig, ax = plt.subplots(figsize=(10, 0.38 * len(rows) + 1.4))
    share = [t["ratio"] / t["max_ratio"] if t["ratio"] is not None else None for t in rows]
    shown = [v for v in share if v]
    low = min([0.1, *shown]) / 1.5
    high = max([10.0, *shown]) * 1.5
    for y, (t, v) in enumerate(zip(rows, share, strict=True)):
        if v is None:
            why = t["why"] or "not measured"
            ax.text(low * 1.1, y, why if len(why) < 70 else why[:67] + "...", va="center",
                    fontsize=8, color="grey", bbox={"facecolor": "white", "edgecolor": "none"})
            continue
        ax.barh(y, v - low, left=low, height=0.6, color="tab:green" if t["met"] else "tab:red")
        ax.text(v * 1.08, y, f"{t['ratio']:.2f}x (limit {t['max_ratio']:.3g}x)", va="center",
                fontsize=8)
    ax.axvline(1.0, color="black", linewidth=1)
    ax.set_xscale("log")
    ax.set_xlim(low, high * 3)
    ax.set_ylim(-0.8, len(rows) - 0.2)
    ax.set_yticks(range(len(rows)), [f"#{t['issue']} {t['target']}" for t in rows], fontsize=8)
    ax.set_xlabel("measured ratio / target ratio (left of the line: met)")
    ax.set_title(f"tifffs targets, {meta['date'][:10]}, {meta['revision']}, {meta['mode']} "
                 f"run, median of {meta['reps']}", fontsize=10)
    ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(
        lambda x, _: f"{x:g}" if math.log10(x).is_integer() else ""))
    fig.tight_layout()
    fig.savefig(path, metadata={"Date": None} if path.endswith(".svg") else None)
    plt.close(fig)
    return True
