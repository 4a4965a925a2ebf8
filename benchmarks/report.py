"""The report: results per entry, targets met or not, as markdown, JSON and a plot."""

from __future__ import annotations

import json
import os
import statistics
from dataclasses import asdict, dataclass, field

from benchmarks.contenders import Entry, Sample
from benchmarks.targets import TARGETS, Target

DOCS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "docs")
BEGIN, END = "<!-- bench:begin -->", "<!-- bench:end -->"
SCENARIO_TITLES = {
    "stack": "Light-sheet stack (x4 views, warm unless cold)",
    "imagej": "ImageJ 1.x headless, one JVM",
    "page": "One big page (memory)",
    "timelapse": "Time-lapse of many small frames (x2)",
    "files": "Many files in 10 folders",
    "flat": "Many files in one folder",
    "tree": "Whole-tree render of the stacks",
}


@dataclass
class Result:
    """Everything measured for one entry, or why it was not."""

    entry: Entry
    samples: list[Sample] = field(default_factory=list)
    status: str = "ok"  # ok | unavailable | skipped
    note: str = ""
    errors: list[str] = field(default_factory=list)

    @property
    def key(self) -> str:
        return self.entry.key

    @property
    def state(self) -> str:
        """ok, unavailable, skipped, error or "not run"."""
        if self.status != "ok":
            return self.status
        return "ok" if self.samples else "error" if self.errors else "not run"

    def value(self, metric: str = "s") -> float | None:
        """The median time ("s"), or the peak over the runs of another metric."""
        values = [getattr(s, metric) for s in self.samples if getattr(s, metric) is not None]
        if not values:
            return None
        return statistics.median(values) if metric == "s" else max(values)


def evaluate(target: Target, results: dict[str, Result]) -> dict:
    """The target's figures: value, baseline, ratio, met (None when not measurable)."""
    mine = results.get(target.measured)
    if isinstance(target.baseline, str):
        other = results.get(target.baseline)
        base = other.value() if other else None
    else:
        other, base = None, float(target.baseline)
    value = mine.value(target.metric) if mine else None
    row = {"issue": target.issue, "target": target.text, "measured": target.measured,
           "baseline": target.baseline, "max_ratio": target.max_ratio, "metric": target.metric,
           "value": value, "base": base, "ratio": None, "met": None, "why": ""}
    if value is not None and base:
        row["ratio"] = value / base
        row["met"] = row["ratio"] <= target.max_ratio * (1 + 1e-9)
    else:
        row["why"] = _why_not(mine, target.metric) or (
            _why_not(other, "s") if isinstance(target.baseline, str) else "")
    return row


def _why_not(result: Result | None, metric: str) -> str:
    """Why ``result`` has no ``metric``: not selected, or its state; "" when it has one."""
    if result is None:
        return "not selected"
    if result.value(metric) is not None:
        return ""
    return f"{result.entry.name}: {result.state}" + (f" ({result.note})" if result.note else "")


def _s(value: float | None) -> str:
    if value is None:
        return "—"
    return f"{value:.4f}" if value < 0.1 else f"{value:.3f}" if value < 100 else f"{value:.0f}"


def _figure(metric: str, value: float | None) -> str:
    if value is None:
        return "—"
    return {"s": f"{_s(value)} s", "daemon_mb": f"{value:.0f} MB"}.get(metric, f"{value:.0f}")


def _entry_rows(results: list[Result], scenario: str) -> list[str]:
    by_name = {r.entry.name: r for r in results if r.entry.scenario == scenario}
    lines = ["| entry | what | median s | range s | vs | ratio | daemon peak MB | fds | runs |",
             "|---|---|---:|---|---|---:|---:|---:|---:|"]
    for r in by_name.values():
        times = [s.s for s in r.samples]
        spread = f"{_s(min(times))}-{_s(max(times))}" if len(times) > 1 else ""
        base = by_name.get(r.entry.baseline or "")
        ratio = (f"{r.value() / base.value():.2f}x" if base and r.value() is not None
                 and base.value() else "")
        median = _s(r.value()) if r.state == "ok" else f"{r.state}: {r.note or r.errors[0]}" \
            if (r.note or r.errors) else r.state
        daemon, fds = r.value("daemon_mb"), r.value("fds")
        lines.append(f"| {r.entry.name} | {r.entry.label} | {median.replace('|', '/')} | "
                     f"{spread} | {r.entry.baseline or ''} | {ratio} | "
                     f"{'' if daemon is None else f'{daemon:.0f}'} | "
                     f"{'' if fds is None else f'{fds:.0f}'} | {len(r.samples)} |")
    return lines


def target_rows(targets: list[dict]) -> list[str]:
    """The targets table: figure, baseline, ratio against its limit, met or not."""
    lines = ["| issue | target | measured | baseline | ratio (limit) | |",
             "|---:|---|---:|---:|---|---|"]
    for t in targets:
        base = _figure("s" if isinstance(t["baseline"], str) else t["metric"], t["base"])
        limit = f"{t['max_ratio']:.3g}x"
        ratio = f"{t['ratio']:.2f}x ({limit})" if t["ratio"] is not None else f"— ({limit})"
        verdict = {True: "met", False: "**not met**", None: t["why"] or "not measured"}[t["met"]]
        lines.append(f"| {t['issue']} | {t['target']} | {_figure(t['metric'], t['value'])} | "
                     f"{base} | {ratio} | {verdict} |")
    return lines


def body(results: list[Result]) -> str:
    """The tables of every scenario that ran, then the targets (markdown, no title)."""
    lines = []
    for scenario, title in SCENARIO_TITLES.items():
        if any(r.entry.scenario == scenario for r in results):
            lines += [f"### {title}", "", *_entry_rows(results, scenario), ""]
    by_key = {r.key: r for r in results}
    lines += ["### Targets", "", *target_rows([evaluate(t, by_key) for t in TARGETS])]
    return "\n".join(lines)


def header(meta: dict) -> str:
    """Where and when: revision, machine, versions, data, cold-cache method."""
    versions = ", ".join(f"{k} {v}" for k, v in meta["versions"].items())
    cases = "; ".join(f"{k}: {v}" for k, v in meta["cases"].items())
    only = f", only {meta['only']}" if meta.get("only") else ""
    lines = [
        (f"- {meta['date']}, tifffs {meta['revision']}, {meta['mode']} run, median of "
         f"{meta['reps']}{only}; {meta['seconds']:.0f} s"),
        (f"- {meta['cpu']}, {meta['cores']} cores, {meta['ram_gib']} GiB, Linux "
         f"{meta['kernel']}, Python {meta['python']}; load {meta['load_at_start']:.1f} at "
         f"start, {meta['load_at_end']:.1f} at end (a shared machine: figures are noisy)"),
        f"- {versions}",
        f"- data: {cases}",
        (f"- cold: {meta['cold']}; warm: the sources are read right before each measurement;"
         " every tifffs measurement on a fresh foreground mount with its own index folder "
         "unless the entry says otherwise; baselines in fresh interpreters, timed after "
         "their imports"),
    ]
    return "\n".join(lines)


def markdown(results: list[Result], meta: dict) -> str:
    """The whole report as markdown."""
    return f"# tifffs benchmark\n\n{header(meta)}\n\n{body(results)}\n"


def document(results: list[Result], meta: dict) -> dict:
    """The whole report as a JSON-ready dict."""
    by_key = {r.key: r for r in results}
    return {"meta": meta,
            "results": [{"key": r.key, **asdict(r.entry), "state": r.state, "note": r.note,
                         "errors": r.errors, "median_s": r.value(),
                         "samples": [asdict(s) for s in r.samples]} for r in results],
            "targets": [evaluate(t, by_key) for t in TARGETS]}


def write(results: list[Result], meta: dict, out_dir: str, docs: bool = False) -> list[str]:
    """Write OUT/YYYY-MM-DD-<rev>[-quick][-only].json/.md/.svg (and docs/ with ``docs``)."""
    from benchmarks.plot import plot

    os.makedirs(out_dir, exist_ok=True)
    stem = (f"{meta['date'][:10]}-{meta['revision']}"
            + ("-quick" if meta["mode"] == "quick" else "") + ("-only" if meta["only"] else ""))
    base = os.path.join(out_dir, stem)
    content = document(results, meta)
    with open(base + ".json", "w") as fh:
        json.dump(content, fh, indent=1)
        fh.write("\n")
    with open(base + ".md", "w") as fh:
        fh.write(markdown(results, meta))
    written = [base + ".json", base + ".md"]
    if plot(content["targets"], meta, base + ".svg"):
        written.append(base + ".svg")
    if docs:
        written += publish(results, meta, base + ".svg")
    return written


def publish(results: list[Result], meta: dict, svg: str) -> list[str]:
    """Put the table between the markers of docs/performance.md, the plot beside it."""
    path = os.path.join(DOCS, "performance.md")
    with open(path) as fh:
        text = fh.read()
    if BEGIN not in text or END not in text:
        raise SystemExit(f"bench: {path} lacks the {BEGIN} and {END} markers: add them where "
                         "the table goes")
    table = f"{header(meta)}\n\n{body(results)}\n"
    head, rest = text.split(BEGIN, 1)
    with open(path, "w") as fh:
        fh.write(f"{head}{BEGIN}\n{table}{END}{rest.split(END, 1)[1]}")
    written = [path]
    if os.path.exists(svg):
        target = os.path.join(DOCS, "performance.svg")
        with open(svg, "rb") as src, open(target, "wb") as dst:
            dst.write(src.read())
        written.append(target)
    return written
