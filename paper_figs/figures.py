"""The figure list: what each figure reads, how to produce what it reads, and drawing it into a folder.

Each :class:`FigureSpec` turns a :class:`Sources` (a validation run folder and a curated-training results
folder) into a :class:`PlotData` via its ``load`` function, then into a figure via its module's ``draw``.
A missing input raises :class:`MissingResults` carrying the command that produces it.
"""

from __future__ import annotations

import shlex
import sys
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from validation.report.curation import STORED, has_results, load_curation
from validation.report.tables import Table, read_table

from . import fig1_dynamics, fig2_fidelity, fig3_bound, fig4_scatter, fig5_cost, fig6_curation, fig7_layers
from .plotdata import MissingResults, PlotData, save_figure
from .style import MODEL_WIDTH_KEY, WIDTH_UNITS


@dataclass
class Sources:
    """Where the results are. ``run``: a validation run folder (or None); ``curate``: the folder holding the
    curated-training run folders (``<results>/curate``, or None); ``profile``: the run's profile name."""

    run: Path | None
    curate: Path | None = None

    @property
    def config(self) -> dict[str, Any]:
        import json

        if self.run is None or not (self.run / "config.json").is_file():
            return {}
        with open(self.run / "config.json", encoding="utf-8") as f:
            return json.load(f)

    def run_command(self, suite: str) -> str:
        """The command that adds ``suite``'s results to this run folder (or makes a run of its profile: a stored
        folder, ``paper_figs.stored_run``, holds no units to resume)."""
        if self.run is not None and (self.run / "config.json").is_file() and (self.run / "units").is_dir():
            return f"lai run --resume {shlex.quote(str(self.run))} --suite {suite}"
        profile = self.config.get("profile", "quick")
        seeds = self.config.get("seeds")
        extra = f" --seeds {','.join(map(str, seeds))}" if profile != "quick" and seeds else ""
        return f"lai run --profile {profile} --suite {suite}{extra}"

    def table(self, name: str, suite: str) -> Table:
        """``<run>/<name>.csv``, or MissingResults naming the command that writes it."""
        if self.run is None:
            raise MissingResults("no validation run folder (with summary.json) found",
                                 "lai run --profile quick")
        t = read_table(self.run / f"{name}.csv")
        if t is None:
            raise MissingResults(f"{self.run / (name + '.csv')} is missing or empty", self.run_command(suite))
        return t


#: Curated-training commands behind figure 6: ``--run quick`` and ``--run full`` execute these (with
#: ``--out <results root>`` appended): the curation profiles of ``validation.settings.profiles.CURATION_PROFILES``
#: (quick: MNIST-1D MLP at its full 40 epochs, 3 seeds, a few methods, both protocols, a few minutes of CPU;
#: paper: four tasks, 10 seeds, the layer-aware members with their rate-matched random controls and the
#: baselines, hours). Without results of its own, figure 6 is
#: drawn from the stored paper-scale tables (``paper_figs/data/curation``).
CURATION_COMMANDS: dict[str, list[list[str]]] = {
    "quick": [["--profile", "quick", "--no-progress"]],
    "full": [["--profile", "full", "--no-progress"]],
}


def curation_command(profile: str = "quick", curate_dir: Path | None = None) -> str:
    """The curated-training commands of ``profile``, writing where figure 6 looks (``curate_dir``, which
    ``lai curate --out ROOT`` fills as ``ROOT/curate``)."""
    root = curate_dir.parent if curate_dir is not None and curate_dir.name == "curate" else None
    out = ["--out", str(root)] if root is not None else []
    cmd = "; ".join("lai curate " + " ".join(shlex.quote(a) for a in [*args, *out])
                    for args in CURATION_COMMANDS[profile])
    if curate_dir is not None and root is None:
        cmd += f" --out ROOT (then draw with --curate ROOT/curate; {curate_dir} is not named curate)"
    return cmd


def _load1(src: Sources) -> PlotData:
    return fig1_dynamics.data(src.table("scores", "fidelity"))


def _load2(src: Sources) -> PlotData:
    return fig2_fidelity.data(src.table("fidelity", "fidelity"))


def _load3(src: Sources) -> PlotData:
    bound = src.table("bound", "bound")
    try:
        layers = src.table("bound_layers", "bound")
    except MissingResults:
        layers = None
    return fig3_bound.data(bound, layers)


def _load4(src: Sources) -> PlotData:
    return fig4_scatter.data(src.table("scores", "fidelity"))


def _load5(src: Sources) -> PlotData:
    models = src.config.get("models", {})
    units = {m: WIDTH_UNITS.get(s.get("width_key", MODEL_WIDTH_KEY.get(m, "")), s.get("width_key", "width"))
             for m, s in models.items() if isinstance(s, dict)}
    return fig5_cost.data(src.table("cost", "cost"), width_units=units)


def _load6(src: Sources) -> PlotData:
    cmd = curation_command("quick", src.curate)
    if has_results(src.curate):
        res = load_curation(src.curate)
    elif has_results(STORED):  # a fresh clone: the stored paper-scale tables
        print(f"[fig6] no curated-training results under {src.curate}; drawing the stored paper-scale tables "
              f"{STORED} (run `{cmd}` for your own)", file=sys.stderr)
        res = load_curation(STORED)
    else:
        raise MissingResults(f"no curated-training results folder ({src.curate or 'results/curate'})", cmd)
    for note in res.notes:
        print(f"[fig6] {note}", file=sys.stderr)
    if not len(res.final):
        raise MissingResults(f"no finished curated-training units under {src.curate}", cmd)
    pd = fig6_curation.data(res.final, res.curves)
    pd.meta["stored"] = res.stored
    pd.meta["folders"] = [str(f) for f in res.folders]
    pd.meta["ignored"] = [str(f) for f in res.ignored]
    return pd


def _load7(src: Sources) -> PlotData:
    try:
        layers = src.table("layer_terms", "fidelity")
    except MissingResults:
        layers = None
    return fig7_layers.data(src.table("scores", "fidelity"), layers)


@dataclass(frozen=True)
class FigureSpec:
    number: int
    name: str
    what: str
    inputs: str
    load: Callable[[Sources], PlotData]
    draw: Callable[[PlotData], Any]
    validation: bool = True  # produced from a validation run folder (needed for exit status 0)

    @property
    def stem(self) -> str:
        return f"fig{self.number}_{self.name}"


FIGURES: list[FigureSpec] = [
    FigureSpec(1, fig1_dynamics.NAME, "influence is dynamic (median and quartiles of clean vs noisy scores and ranks over training)",
               "scores.csv", _load1, fig1_dynamics.draw),
    FigureSpec(2, fig2_fidelity.NAME, "ranking like Exact: Spearman per estimator and its paired difference to LAI",
               "fidelity.csv", _load2, fig2_fidelity.draw),
    FigureSpec(3, fig3_bound.NAME, "|Ghost - LAI| vs the data-dependent and a-priori bounds; per-layer share",
               "bound.csv, bound_layers.csv", _load3, fig3_bound.draw),
    FigureSpec(4, fig4_scatter.NAME, "LAI vs Ghost scores at a few steps, noisy samples marked",
               "scores.csv", _load4, fig4_scatter.draw),
    FigureSpec(5, fig5_cost.NAME, "time and peak memory relative to a training step over batch and width",
               "cost.csv, config.json", _load5, fig5_cost.draw),
    FigureSpec(6, fig6_curation.NAME, "curated training: paired differences to vanilla and to the best layer-aware member",
               "curate/<task>-<id>/units/curate/**.json", _load6, fig6_curation.draw, validation=False),
    FigureSpec(7, fig7_layers.NAME, "layer-aware question: all-layer vs last-layer LAI vs LAI-fit; which layers hurt",
               "scores.csv, layer_terms.csv", _load7, fig7_layers.draw),
]


@dataclass
class Outcome:
    spec: FigureSpec
    status: str  # "drawn" | "skipped" | "failed"
    reason: str = ""
    command: str | None = None
    paths: list[Path] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def render(spec: FigureSpec, src: Sources, out_dir: Path, formats: Sequence[str] = ("png", "pdf"),
           dpi: float | None = None) -> Outcome:
    """Load, draw and write one figure; never raises (a failure is reported in the outcome)."""
    try:
        pd = spec.load(src)
    except MissingResults as exc:
        return Outcome(spec, "skipped", str(exc), exc.command)
    except Exception as exc:  # a malformed results file: report it and go on with the other figures
        return Outcome(spec, "failed", f"reading the results: {type(exc).__name__}: {exc}",
                       notes=traceback.format_exc().splitlines()[-6:])
    try:
        fig = spec.draw(pd)
        paths = save_figure(fig, pd, out_dir, spec.stem, formats, dpi)
    except Exception as exc:
        return Outcome(spec, "failed", f"drawing: {type(exc).__name__}: {exc}",
                       notes=traceback.format_exc().splitlines()[-6:])
    notes = []
    if pd.meta.get("dropped"):
        notes.append(f"left out of the log axes (zero error or bound): {pd.meta['dropped']}")
    if pd.meta.get("ignored"):
        notes.append(f"older curation folders not used: {pd.meta['ignored']}")
    return Outcome(spec, "drawn", _describe(spec, pd), paths=paths, notes=notes)


def _describe(spec: FigureSpec, pd: PlotData) -> str:
    m = pd.meta
    if spec.number == 1:
        return f"{m['model']} seed {m['seed']}, {m['estimator']} scores, steps {m['early']}..{m['late']}"
    if spec.number == 6:
        return (f"tasks {m['tasks']}, protocols {m['protocols']}, methods {m['methods']}"
                + (" (stored paper-scale tables)" if m.get("stored") else ""))
    if "models" in m:
        return f"models {m['models']}"
    return ""


__all__ = ["FIGURES", "FigureSpec", "Sources", "Outcome", "render", "CURATION_COMMANDS", "curation_command"]
