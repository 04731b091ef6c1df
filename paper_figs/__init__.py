"""Paper figures drawn only from result files that runs wrote (``python -m paper_figs``; see cli.py).

| figure | module | reads |
|---|---|---|
| 1 influence is dynamic | fig1_dynamics | scores.csv |
| 2 ranking like Exact (paired to LAI) | fig2_fidelity | fidelity.csv |
| 3 the bound, per-layer error share | fig3_bound | bound.csv, bound_layers.csv |
| 4 LAI vs Ghost scatter | fig4_scatter | scores.csv |
| 5 cost relative to a training step | fig5_cost | cost.csv (+ config.json for width units) |
| 6 curated training | fig6_curation | <results>/curate/*/units (validation/report/curation.py) |

Each figure module has ``data(table, ...) -> PlotData`` (the exact numbers drawn, written as the figure's
CSV), ``draw(plot_data) -> Figure`` and ``figure(table, ...) = draw(data(...))``. ``style`` holds the shared
look (3.4 in / 7 in widths, >= 7 pt text, Okabe-Ito colours, each estimator's from its registry family). This
package only draws: the tables it reads (``validation.report.tables.Table``, the curation tables of
``validation.report.curation``) and the estimator names (``validation.settings.estimators``) live in
``validation``.
"""
