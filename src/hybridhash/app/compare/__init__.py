"""The comparison grid: every method on the same model, split, selection rule and metrics.

``grid`` runs the cells (method x bits x seed) as ordinary training runs and evaluates them;
``report`` turns their records into the table, plots and HTML page; ``floors`` computes the
training-free floors drawn under the table (random projections of pixels, a small MLP);
``selectors`` says which methods ``--methods`` words such as ``baselines`` stand for.
"""
