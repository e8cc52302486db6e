"""Evaluation: metrics (one confusion matrix), scoring a labelled split (scoring.py, `masksmith.evaluate`) and
its reports (report.py: JSON, CSV, markdown, plots; html_report.py: one self-contained page)."""
