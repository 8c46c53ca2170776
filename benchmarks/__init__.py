"""Side-by-side benchmarks (docs/DESIGN.md §10), run from the repository root as modules:
``python -m benchmarks.<name>``, so that only the name ``benchmarks`` is added to the import
path (a script's own folder on ``sys.path`` would let ``kernels.py`` shadow the installed
``kernels`` package that transformers imports)."""
