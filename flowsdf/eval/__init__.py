"""Evaluation: 2-D and 3-D metrics, timing, figures, the evaluation of a run and the report."""
