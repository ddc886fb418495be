"""Results as a terminal table, a Markdown ``report.md`` and PNG plots (DESIGN.md, Conventions).

`tables` turns a list of row dicts into a rich table or a Markdown table; `markdown` writes a run
folder's ``report.md`` from sections; `plots` draws the accuracy-matrix heatmap and curves with
matplotlib's Agg backend (imported only when a plot is made).
"""
