"""Scoring: the confusion matrix, the paper's four metrics, tables and reports."""
