"""Figures stage: CSV, PNG/PDF and Markdown outputs.

paper     the paper's figures and tables
analysis  the analyses beyond the paper
theory    the synthetic experiments (Figures 2 and 4)
"""
