"""``cleave coupling``: when to split services and when to merge them, measured.

The pieces, in the order the command uses them:

- :mod:`~cleave.coupling.history`: commits and release points from ``git log``;
- :mod:`~cleave.coupling.changes`: commits grouped into logical changes;
- :mod:`~cleave.coupling.layout`: which service each file belongs to;
- :mod:`~cleave.coupling.structure`: the declared graph, its smells, unused answers;
- :mod:`~cleave.coupling.traffic`: calls per request and the co-location dividend;
- :mod:`~cleave.coupling.measures`: code-maat's change coupling and clusters;
- :mod:`~cleave.coupling.analysis` and :mod:`~cleave.coupling.advice`: the verdicts;
- :mod:`~cleave.coupling.report`: JSON, terminal tables, a self-contained HTML page.

See docs/coupling.md.
"""
