"""One look for every paper figure: sizes, fonts, a colour-blind-safe palette, names and units.

Widths follow a two-column paper: ``SINGLE`` = 3.4 in (one column), ``DOUBLE`` = 7.0 in (page width).
Fonts are ``FONT_PT`` = 8 pt (ticks and legends ``SMALL_PT`` = 7 pt), so text stays legible printed at
column width. Colours are the Okabe–Ito palette (distinguishable with the common colour-vision
deficiencies); every estimator, model and curation method keeps the same colour and marker in every figure.

Figures are built as ``matplotlib.figure.Figure`` objects (no pyplot state, Agg canvas), inside
``rc_context(RC)``; :func:`new_figure` does both.
"""

from __future__ import annotations

import contextlib
from typing import Any, Iterator

import matplotlib

matplotlib.use("Agg")  # headless: figures are only ever written to files

from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from validation.settings import estimators as chosen  # noqa: E402

SINGLE = 3.4  # in, one column
DOUBLE = 7.0  # in, two columns
FONT_PT = 8.0
SMALL_PT = 7.0

RC: dict[str, Any] = {
    "font.size": FONT_PT,
    "axes.titlesize": FONT_PT,
    "axes.labelsize": FONT_PT,
    "xtick.labelsize": SMALL_PT,
    "ytick.labelsize": SMALL_PT,
    "legend.fontsize": SMALL_PT,
    "legend.title_fontsize": SMALL_PT,
    "figure.titlesize": FONT_PT,
    "font.family": "sans-serif",
    "font.sans-serif": ["DejaVu Sans", "Arial", "Helvetica"],
    "axes.linewidth": 0.6,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "xtick.major.width": 0.6,
    "ytick.major.width": 0.6,
    "xtick.major.size": 2.5,
    "ytick.major.size": 2.5,
    "xtick.minor.size": 1.5,
    "ytick.minor.size": 1.5,
    "lines.linewidth": 1.2,
    "lines.markersize": 3.5,
    "legend.frameon": False,
    "legend.handlelength": 1.6,
    "legend.borderaxespad": 0.3,
    "axes.grid": False,
    "savefig.dpi": 300,
    "savefig.bbox": None,  # constrained layout already fits the figure; the width stays exactly as set
    "pdf.fonttype": 42,  # TrueType in PDFs (editable, accepted by publishers)
    "ps.fonttype": 42,
}

# Okabe & Ito (2008), "Color Universal Design"
OKABE_ITO = {
    "black": "#000000", "orange": "#E69F00", "sky": "#56B4E9", "green": "#009E73",
    "yellow": "#F0E442", "blue": "#0072B2", "vermillion": "#D55E00", "purple": "#CC79A7",
}
GREY = "#8C8C8C"
CYCLE = [OKABE_ITO[k] for k in ("blue", "vermillion", "green", "orange", "purple", "sky", "black", "yellow")]
MARKERS: list[Any] = ["o", "s", "^", "D", "v", "P", "X", "<", ">", "h", "p", "*", "d", "8", "H", (4, 1, 0),
                      (6, 1, 0), (5, 1, 0)]  # the tuples: 4-, 6- and 5-pointed stars

NOISY_COLOR = OKABE_ITO["vermillion"]
CLEAN_COLOR = OKABE_ITO["blue"]
NOISY_MARKER = "x"
CLEAN_MARKER = "o"

#: Each estimator family's colour and marker (``influence.estimators``' ``family``), worn by its first entry.
FAMILIES: dict[str, tuple[str, str]] = {
    "exact": (OKABE_ITO["black"], "D"), "ghost": (OKABE_ITO["vermillion"], "^"), "lai": (OKABE_ITO["blue"], "o"),
    "tracin": (OKABE_ITO["green"], "P"),
}
#: Colours of the other entries, in order: each entry gets one no other entry has, far from the family colours.
SHADES = [OKABE_ITO["orange"], OKABE_ITO["purple"], "#882255", "#44AA99", OKABE_ITO["sky"], "#999933", "#332288",
          "#661100", "#6699CC", "#AA4499"]
#: Scores drawn that are not estimators: label, colour, marker.
NOT_ESTIMATORS: dict[str, tuple[str, str, str]] = {
    "loss": ("Loss only", GREY, "$\\ell$"),
    "counterfactual": ("Counterfactual", OKABE_ITO["purple"], "*"),
    "forward": ("Forward pass", GREY, "."),
    "forward_backward": ("Forward+backward", GREY, "1"),
    "train_step": ("Training step", GREY, "|"),
}


def estimator_styles() -> dict[str, tuple[str, str, str]]:
    """(label, colour, marker) of every estimator ``lai run`` scores (the registry's and the research variants,
    ``validation.settings.estimators.scored``) and of the scores that are not estimators. Labels are the
    registry's; the first entry of a family wears the family's colour and marker (:data:`FAMILIES`), every other
    entry the next colour of :data:`SHADES` no entry has yet (the non-sequence entries first, so the panels
    of every model show distinct colours), with a marker no entry and no score of :data:`NOT_ESTIMATORS` has."""
    names = chosen.scored(sequence=False)
    names += [n for n in chosen.scored() if n not in names]
    out: dict[str, tuple[str, str, str]] = {}
    used: set[str] = set()
    for i, name in enumerate(names):
        fam = FAMILIES.get(chosen.family(name))
        if fam is not None and fam[0] not in used:
            colour, marker = fam
        else:
            colour = next((c for c in SHADES + CYCLE if c not in used), CYCLE[i % len(CYCLE)])
            taken = {v[2] for v in out.values()} | {v[2] for v in NOT_ESTIMATORS.values()}
            marker = next((m for m in MARKERS if m not in taken), MARKERS[i % len(MARKERS)])
        used.add(colour)
        out[name] = (chosen.label(name), colour, marker)
    return {**out, **NOT_ESTIMATORS}


MODELS: dict[str, tuple[str, str, str]] = {
    "mlp": ("MLP", OKABE_ITO["blue"], "o"),
    "cnn1d": ("CNN-1D", OKABE_ITO["green"], "s"),
    "cnn2d": ("CNN-2D", OKABE_ITO["orange"], "^"),
    "transformer": ("Transformer", OKABE_ITO["purple"], "D"),
    "small-cnn": ("small CNN", OKABE_ITO["vermillion"], "v"),
}

#: What a model's "width" counts (the profile's ``width_key``), for axis labels.
WIDTH_UNITS = {"hidden": "hidden units", "channels": "channels", "d_model": "d_model"}
MODEL_WIDTH_KEY = {"mlp": "hidden", "cnn1d": "channels", "cnn2d": "channels", "transformer": "d_model"}


def _lookup(table: dict[str, tuple[str, str, str]], name: str, index: int) -> tuple[str, str, str]:
    if name in table:
        return table[name]
    return (name, CYCLE[index % len(CYCLE)], MARKERS[index % len(MARKERS)])


def estimator_style(name: str, index: int = 0) -> tuple[str, str, str]:
    """(label, colour, marker) of an estimator (:func:`estimator_styles`); unknown names get the ``index``-th
    palette entry."""
    return _lookup(estimator_styles(), name, index)


def model_style(name: str, index: int = 0) -> tuple[str, str, str]:
    """(label, colour, marker) of a reference model."""
    return _lookup(MODELS, name, index)


METHODS: dict[str, tuple[str, str, str]] = {
    # curated-training methods (influence.curation.methods): label, colour, marker
    "vanilla": ("Vanilla (no curation)", OKABE_ITO["black"], "o"),
    "lai": ("LAI", OKABE_ITO["blue"], "s"),
    "lai-last": ("LAI (last layer)", OKABE_ITO["sky"], "v"),
    "ghost": ("Ghost", OKABE_ITO["vermillion"], "^"),
    "exact": ("Exact", GREY, "D"),
    "tracin": ("TracIn", OKABE_ITO["green"], "P"),
    "lai-topk": ("LAI top-k", OKABE_ITO["blue"], "<"),
    "ghost-topk": ("Ghost top-k", OKABE_ITO["vermillion"], ">"),
    "lai-greats": ("LAI-GREATS", OKABE_ITO["purple"], "X"),
    "greats": ("GREATS", OKABE_ITO["purple"], "*"),
    "random": ("Random drop", OKABE_ITO["orange"], "d"),
    "small-loss": ("Small loss", OKABE_ITO["purple"], "h"),
    "large-grad": ("Large gradient", OKABE_ITO["green"], "p"),
}
#: Baselines (and top-k variants) are dashed so that methods sharing a colour stay apart.
METHOD_DASHED = frozenset({"random", "small-loss", "large-grad", "lai-topk", "ghost-topk", "greats"})
DATASETS = {"mnist1d": "MNIST-1D", "digits": "digits 8×8", "pydoc": "pydoc text", "mnist-real": "real MNIST",
            "cifar10n": "CIFAR-10N"}


def method_style(name: str, index: int = 0) -> tuple[str, str, str]:
    """(label, colour, marker) of a curation method; unknown names get the ``index``-th palette entry."""
    return _lookup(METHODS, name, index)


def plain_log_ticks(axis: Any, max_decades: float = 1.6) -> None:
    """Tick labels of a log axis as plain numbers (0.2, 1, 5, 10) instead of 2 x 10^-1; when the view spans
    fewer than ``max_decades`` decades the 2x and 5x ticks between decades are labelled too."""
    import math

    from matplotlib.ticker import Formatter

    class Plain(Formatter):
        def __init__(self, minor: bool) -> None:
            self.minor = minor

        def __call__(self, x: float, pos: int | None = None) -> str:
            if x <= 0:
                return ""
            lead = round(x / 10 ** math.floor(math.log10(x) + 1e-9), 6)
            if self.minor:
                lo, hi = sorted(self.axis.get_view_interval())
                if lo <= 0 or math.log10(hi / lo) > max_decades or lead not in (2.0, 5.0):
                    return ""
            return f"{x:g}"

    axis.set_major_formatter(Plain(False))
    axis.set_minor_formatter(Plain(True))


def readable_log_ticks(ax: Any, which: str = "y", min_labels: int = 3) -> None:
    """Fixed, plainly labelled ticks on a log axis whose data are already plotted: decades when the view spans
    enough of them for ``min_labels`` labels, else 1-2-5 per decade, else 1-1.5-2-3-5-7 (so a short axis still
    carries at least ``min_labels`` numbers, and none is printed as 2 x 10^-1). No minor labels."""
    import math

    from matplotlib.ticker import FixedLocator, FuncFormatter, NullFormatter

    ax.autoscale_view()
    axis = ax.yaxis if which == "y" else ax.xaxis
    lo, hi = sorted(ax.get_ylim() if which == "y" else ax.get_xlim())
    if lo <= 0:
        return
    ticks: list[float] = []
    for mantissas in ((1.0,), (1.0, 2.0, 5.0), (1.0, 1.5, 2.0, 3.0, 5.0, 7.0)):
        ticks = [m * 10.0 ** k for k in range(math.floor(math.log10(lo)) - 1, math.ceil(math.log10(hi)) + 1)
                 for m in mantissas]
        ticks = [v for v in ticks if lo <= v * (1 + 1e-9) and v <= hi * (1 + 1e-9)]
        if len(ticks) >= min_labels:
            break
    while len(ticks) > 7:  # too many: keep every other, from the first
        ticks = ticks[::2]
    axis.set_major_locator(FixedLocator(ticks))
    axis.set_major_formatter(FuncFormatter(lambda x, pos: f"{x:g}"))
    axis.set_minor_formatter(NullFormatter())


@contextlib.contextmanager
def style() -> Iterator[None]:
    """rcParams of the paper style for the duration of the block (building and saving a figure)."""
    with matplotlib.rc_context(RC):
        yield


def new_figure(width: float = SINGLE, height: float | None = None) -> Figure:
    """An empty figure ``width`` x ``height`` inches (height: 0.75 * width by default) on an Agg canvas,
    with the paper rcParams applied to everything created while :func:`style` is active."""
    fig = Figure(figsize=(width, height if height is not None else 0.75 * width), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


__all__ = ["SINGLE", "DOUBLE", "FONT_PT", "SMALL_PT", "RC", "OKABE_ITO", "CYCLE", "MARKERS", "GREY",
           "NOISY_COLOR", "CLEAN_COLOR", "NOISY_MARKER", "CLEAN_MARKER", "FAMILIES", "SHADES", "NOT_ESTIMATORS",
           "estimator_styles", "MODELS", "WIDTH_UNITS",
           "MODEL_WIDTH_KEY", "METHODS", "METHOD_DASHED", "DATASETS", "estimator_style", "model_style", "method_style", "plain_log_ticks", "readable_log_ticks", "style", "new_figure"]
